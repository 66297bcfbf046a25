"""The registry as a table: ``zsclust encoders`` prints it, docs/encoders.md holds its markdown form."""

from __future__ import annotations

from ._registry import get_encoder_spec

__all__ = ["encoder_table"]

_MARKDOWN_HEADER = ("| name | paper name | weights source | preprocessing | dim | group |\n"
                    "|---|---|---|---|---|---|")


def _markdown_source(spec) -> str:
    if spec.weights_url:
        basename = spec.weights_url.rsplit("/", 1)[-1]
        renamed = f" as `{spec.local_file_name}`" if spec.local_file_name != basename else ""
        checksum = ", sha256 checked" if spec.sha256 else ""
        return f"[{basename}]({spec.weights_url}){renamed}{checksum}"
    if spec.hf_hub_id:
        return f"hf-hub `{spec.hf_hub_id}`"
    return f"`{spec.weights_source}`"


def encoder_table(names: list[str], *, markdown: bool = False) -> str:
    """One row per registered name: name, group, output width and weights source (URL, hub id, local, none).

    The markdown form adds the paper name and the preprocessing, for docs/encoders.md.
    """
    specs = [get_encoder_spec(n) for n in names]
    if markdown:
        rows = [f"| `{s.name}` | {s.paper_name} | {_markdown_source(s)} | {s.preprocessing} | {s.num_features} "
                f"| {s.group} |" for s in specs]
        return "\n".join([_MARKDOWN_HEADER, *rows])
    width = max([len(s.name) for s in specs] + [4])
    rows = [f"{'name':{width}s}  {'group':15s} {'dim':>6s}  weights source"]
    rows += [f"{s.name:{width}s}  {s.group:15s} {s.num_features:6d}  {s.weights_source}" for s in specs]
    return "\n".join(rows)
