"""Python tooling for mhmoe: GGUF writer, byte-level BPE, independent numpy reference,
test-model and golden generators. See README.md in this folder."""
