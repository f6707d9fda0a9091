"""`taslora predict EXPORT IMAGES...`: classify image files with an export, using the preprocessing it records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from taslora_cli.app import app, console, handle_errors


@app.command("predict")
@handle_errors
def predict_cmd(
    export: Annotated[Path, typer.Argument(help="Export folder written by `taslora export` (or an .onnx file of one).")],
    images: Annotated[list[Path], typer.Argument(help="Image files, or folders of them (searched recursively).")],
    runtime: Annotated[str, typer.Option("--runtime", help="onnx: model.onnx on onnxruntime CPU, preprocessing read from its metadata_props; torch: model.safetensors, preprocessing read from config.json.")] = "onnx",
    top_k: Annotated[int, typer.Option("--top-k", help="Classes shown per image (at most the number of classes).")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Print only a JSON object.")] = False,
    threads: Annotated[Optional[int], typer.Option("--threads", help="onnxruntime intra-op threads.")] = None,
) -> None:
    """Top-k classes of each image, fed exactly as the export records (input size, normalisation, interpolation,
    crop, grayscale or RGB), with the class names of the data it was trained on."""
    from taslora_deploy.predict import predict

    result = predict(export, images, runtime=runtime, top_k=top_k, threads=threads)
    if as_json:
        print(json.dumps(result.to_dict()))
        return
    console.print(f"{escape(str(result.artifact))} ({'onnxruntime CPU' if result.runtime == 'onnx' else 'torch'}); "
                  f"preprocessing from {escape(result.record)}: {escape(result.preprocessing.describe())}",
                  highlight=False)
    table = Table(title=f"top-{result.top_k} of {len(result.predictions)} image(s)")
    table.add_column("image", overflow="fold")
    for rank in range(1, result.top_k + 1):
        table.add_column(f"#{rank}", overflow="fold")
    for pred in result.predictions:
        cells = [f"{escape(score.label)} {100 * score.probability:.1f}%" for score in pred.top]
        table.add_row(escape(str(pred.path)), *[f"[bold]{cells[0]}[/]", *cells[1:]])
    console.print(table)
