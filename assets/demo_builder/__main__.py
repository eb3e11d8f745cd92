"""`python -m assets.demo_builder`: regenerate `assets/demo_kb/` deterministically."""

from assets.demo_builder.build import build_demo_assets, demo_kb_path

print(build_demo_assets(demo_kb_path(), overwrite=True))
