"""The demo KB's photographs: public sample images shipped inside the scikit-image and scikit-learn
wheels (no network), with their licence notes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

PHOTO_MAX_SIDE = 320


def _src(package: str, how: str, note: str) -> tuple[str, str, str]:
    return package, how, note


#: key -> (package, how to load it, licence / source note as given in the package's own docs)
PHOTOS: dict[str, tuple[str, str, str]] = {
    "chelsea": _src(
        "scikit-image",
        "skimage.data.chelsea()",
        "No copyright restrictions. CC0 by the photographer (Stefan van der Walt).",
    ),
    "coffee": _src(
        "scikit-image",
        "skimage.data.coffee()",
        "Courtesy of Pikolo Espresso Bar. No copyright restrictions. CC0 by the photographer (Rachel Michetti).",
    ),
    "horse": _src(
        "scikit-image",
        "skimage.data.horse()",
        "From openclipart. No copyright restrictions. CC0 given by owner (Andreas Preuss (marauder)).",
    ),
    "moon": _src(
        "scikit-image",
        "skimage.data.moon()",
        "Surface of the moon. The docstring gives no per-image note: public sample image "
        "shipped with scikit-image, covered by its LICENSE.txt ('Files: *', BSD-3-Clause).",
    ),
    "rocket": _src(
        "scikit-image",
        "skimage.data.rocket()",
        "Launch of DSCOVR on Falcon 9, captured by SpaceX and released in the public domain.",
    ),
    "motorcycle": _src(
        "scikit-image",
        "skimage.data.stereo_motorcycle()[0]",
        "Left view of the Middlebury 2014 stereo benchmark pair (Nesic, Westling, Wang, "
        "Kitajima, Krathwohl and Scharstein, Middlebury College), down-sampled by scikit-image. No "
        "per-image note: public sample image shipped with scikit-image, covered by its "
        "LICENSE.txt ('Files: *', BSD-3-Clause).",
    ),
    "hubble": _src(
        "scikit-image",
        "skimage.data.hubble_deep_field()",
        "Hubble eXtreme Deep Field from HubbleSite; captured by NASA and may be freely used in the public domain.",
    ),
    "retina": _src(
        "scikit-image",
        "skimage.data.retina()",
        "Fundus photograph from Wikimedia Commons (Mikael Häggström); CC0 1.0 Universal Public Domain Dedication.",
    ),
    "camera": _src(
        "scikit-image", "skimage.data.camera()", "No copyright restrictions. CC0 by the photographer (Lav Varshney)."
    ),
    "coins": _src(
        "scikit-image",
        "skimage.data.coins()",
        "Greek coins from Pompeii, from the Brooklyn Museum Collection. No known copyright restrictions.",
    ),
    "gravel": _src(
        "scikit-image", "skimage.data.gravel()", "From CC0Textures (Gravel04), Creative Commons CC0 License."
    ),
    "cell": _src(
        "scikit-image",
        "skimage.data.cell()",
        "Quantitative phase image of a cell (Müller et al., Optics Express 2018); CC0, dedicated to the public domain.",
    ),
    "ihc": _src(
        "scikit-image",
        "skimage.data.immunohistochemistry()",
        "Immunohistochemical staining, Center for Microscopy And Molecular Imaging (CMMI). No known "
        "copyright restrictions.",
    ),
    "astronaut": _src(
        "scikit-image",
        "skimage.data.astronaut()",
        "NASA Great Images database. No known copyright restrictions, released into the public domain.",
    ),
    "china": _src(
        "scikit-learn",
        "sklearn.datasets.load_sample_image('china.jpg')",
        "Creative Commons Attribution 2.0 (https://creativecommons.org/licenses/by/2.0/); "
        "attribution: 'Some rights reserved by danielbuechele', source "
        "https://www.flickr.com/photos/danielbuechele/6061409035/; retrieved 21 August 2011 "
        "by Robert Layton.",
    ),
    "flower": _src(
        "scikit-learn",
        "sklearn.datasets.load_sample_image('flower.jpg')",
        "Creative Commons Attribution 2.0 (https://creativecommons.org/licenses/by/2.0/); "
        "attribution as given in scikit-learn's images/README.txt: 'Some rights reserved by "
        "danielbuechele', source https://www.flickr.com/photos/vultilion/6056698931/; "
        "retrieved 21 August 2011 by Robert Layton.",
    ),
}


def load_photo(key: str) -> Image.Image:
    """Load one sample photo as an RGB PIL image (no network: only files inside the wheels)."""
    if PHOTOS[key][0] == "scikit-learn":
        # the file `load_sample_image` reads, opened the same way but without importing sklearn
        # (a multi-second import)
        spec = importlib.util.find_spec("sklearn")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("scikit-learn is needed to regenerate the demo assets (its sample photos)")
        path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "images" / f"{key}.jpg"
        with Image.open(path) as im:
            arr = np.asarray(im)
    else:
        # optional dev dependency (only regenerating the assets needs it): imported when used
        import skimage.data as d

        arr = {
            "chelsea": d.chelsea,
            "coffee": d.coffee,
            "horse": d.horse,
            "moon": d.moon,
            "rocket": d.rocket,
            "motorcycle": lambda: d.stereo_motorcycle()[0],
            "hubble": d.hubble_deep_field,
            "retina": d.retina,
            "camera": d.camera,
            "coins": d.coins,
            "gravel": d.gravel,
            "cell": d.cell,
            "ihc": d.immunohistochemistry,
            "astronaut": d.astronaut,
        }[key]()
    arr = np.asarray(arr)
    if arr.dtype == bool:  # the horse is a boolean silhouette: True = background
        arr = np.where(arr, 255, 0).astype(np.uint8)
    img = Image.fromarray(arr.astype(np.uint8)).convert("RGB")
    w, h = img.size
    scale = PHOTO_MAX_SIDE / max(w, h)
    if scale < 1:
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.LANCZOS)
    return img
