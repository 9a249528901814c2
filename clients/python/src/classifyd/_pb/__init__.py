"""Code generated from proto/classifyd.proto by scripts/gen_proto.py; do not edit."""
