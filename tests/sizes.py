"""The small model shape the tests build (fast on CPU), and the built-in default's shape."""

SMALL = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
    "seed": 0,
}
DEFAULT = {**SMALL, "hidden_size": 64, "intermediate_size": 128}  # conf/model/tiny.yaml
