"""CSDN (CLIP-Driven Semantic Discovery Network; arXiv 2401.05806, IEEE TMM 2025) as a registered
architecture (DESIGN.md sections 10 and 12).

    config.py    named configs (csdn-rn50, csdn-tiny) and the embedding contract; torch-free
    network.py   the network, its builder (open_clip RN50, stride-1 layer4, resized attention pool)
                 and the inference graph: image + modality -> cat[l2(BN(GeM)), l2(attnpool)]
    losses.py    SupCon, weighted-regularisation triplet, MSEL
    data.py      the two-view visible augmentation and the training dataset
    recipe.py    the three training stages (prompts; fusion; image encoder)

Written from the paper and the published code (github nengdong96/CSDN), not copied from it.
"""
