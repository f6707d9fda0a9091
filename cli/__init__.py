"""taslora_cli: the `taslora` command-line app (installed under the import name taslora_cli)."""
