"""MIP (modality- and instance-aware visual prompts; arXiv 2406.12316, ICMR 2024) as a registered
architecture whose inference inputs include the camera (DESIGN.md sections 11 and 12).

    config.py    named configs (mip-vit-b-16, mip-tiny), the camera map and the embedding contract;
                 torch-free
    network.py   the network (timm ViT, overlapping patches, SIE, JPM, modality prompts, instance
                 prompt generator), its builder and the inference graph: image + modality + camera ->
                 L2norm(cat[global, locals / 4])
    recipe.py    the training recipe (ID + soft-margin triplet + MSEL + IAEL, SGD with per-module
                 learning rates, cosine-refine schedule, 8 x (4 + 4) sampler)

Written from the paper and the published code (github wurqjackey/MIP), not copied from it.
"""
