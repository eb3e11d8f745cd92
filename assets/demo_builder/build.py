"""The demo knowledge base (`assets/demo_kb/`): 48 entities in 14 groups that share a name, plus
ready example mentions.

Within a group the names are the same ("Chelsea" the cat, the fictional football club, the
London district, the fictional ferry), so the name alone never decides. The sentence decides
some examples; the image decides the rest.

Images are real photographs where a dependency ships them (the public sample images of
scikit-image's `skimage.data` and scikit-learn's `load_sample_image`); everything else is drawn
here with PIL. `build_demo_assets` regenerates the whole folder deterministically:

  kb.jsonl            one entity per line (project JSONL KB format, see `mimic.data.kb_files`)
  examples.jsonl      example mentions, also a split named "examples" for
                      `mimic.data.formats.load_jsonl_dataset(assets/demo_kb)`
  images/             entity images: photos as JPEG (quality 85, <= 320 px on the long side),
                      drawings as 256 x 256 PNG
  query_images/       the examples' query images: other views (crop, flip, rotation, colour
                      change) of the gold entity's image, JPEG quality 85
  README.md           where every image comes from and its licence note

Descriptions were written for this project. Named organisations and products (cafés, clubs,
cinemas, vehicles) are fictional unless the text says otherwise; the "demo town" is Northbridge,
which is fictional too.

scikit-image and scikit-learn are needed only to *regenerate* the assets (they are dev
dependencies); loading the committed assets needs neither.
"""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps

__all__ = ["ENTITIES", "EXAMPLES", "PHOTOS", "ambiguity_groups", "build_demo_assets", "demo_kb_path",
           "load_demo_kb"]

PHOTO_MAX_SIDE = 320
DRAWN_SIZE = 256
QUERY_MAX_SIDE = 256
JPEG_QUALITY = 85
_SS = 2  # drawings are made at 2x and downsampled (anti-aliasing without randomness)


def demo_kb_path() -> Path:
    """The committed demo KB folder (`<repo>/assets/demo_kb`)."""
    return Path(__file__).resolve().parents[1] / "demo_kb"


def load_demo_kb(path: str | Path | None = None):
    """-> (KnowledgeBase, KBReport) for the demo KB, read with `mimic.data.kb_files.load_kb`."""
    from mimic.data.kb_files import load_kb
    return load_kb(Path(path or demo_kb_path()) / "kb.jsonl")


# ------------------------------------------------------------------------------------------------
# Photos shipped by dependencies
# ------------------------------------------------------------------------------------------------

def _src(package: str, how: str, note: str) -> tuple[str, str, str]:
    return package, how, note


#: key -> (package, how to load it, licence / source note as given in the package's own docs)
PHOTOS: dict[str, tuple[str, str, str]] = {
    "chelsea": _src("scikit-image", "skimage.data.chelsea()",
                    "No copyright restrictions. CC0 by the photographer (Stefan van der Walt)."),
    "coffee": _src("scikit-image", "skimage.data.coffee()",
                   "Courtesy of Pikolo Espresso Bar. No copyright restrictions. CC0 by the photographer "
                   "(Rachel Michetti)."),
    "horse": _src("scikit-image", "skimage.data.horse()",
                  "From openclipart. No copyright restrictions. CC0 given by owner (Andreas Preuss (marauder))."),
    "moon": _src("scikit-image", "skimage.data.moon()",
                 "Surface of the moon. The docstring gives no per-image note: public sample image "
                 "shipped with scikit-image, covered by its LICENSE.txt ('Files: *', BSD-3-Clause)."),
    "rocket": _src("scikit-image", "skimage.data.rocket()",
                   "Launch of DSCOVR on Falcon 9, captured by SpaceX and released in the public domain."),
    "motorcycle": _src("scikit-image", "skimage.data.stereo_motorcycle()[0]",
                       "Left view of the Middlebury 2014 stereo benchmark pair (Nesic, Westling, Wang, "
                       "Kitajima, Krathwohl and Scharstein, Middlebury College), down-sampled by scikit-image. No "
                       "per-image note: public sample image shipped with scikit-image, covered by its "
                       "LICENSE.txt ('Files: *', BSD-3-Clause)."),
    "hubble": _src("scikit-image", "skimage.data.hubble_deep_field()",
                   "Hubble eXtreme Deep Field from HubbleSite; captured by NASA and may be freely used in "
                   "the public domain."),
    "retina": _src("scikit-image", "skimage.data.retina()",
                   "Fundus photograph from Wikimedia Commons (Mikael Häggström); CC0 1.0 Universal Public "
                   "Domain Dedication."),
    "camera": _src("scikit-image", "skimage.data.camera()",
                   "No copyright restrictions. CC0 by the photographer (Lav Varshney)."),
    "coins": _src("scikit-image", "skimage.data.coins()",
                  "Greek coins from Pompeii, from the Brooklyn Museum Collection. No known copyright "
                  "restrictions."),
    "gravel": _src("scikit-image", "skimage.data.gravel()",
                   "From CC0Textures (Gravel04), Creative Commons CC0 License."),
    "cell": _src("scikit-image", "skimage.data.cell()",
                 "Quantitative phase image of a cell (Müller et al., Optics Express 2018); CC0, dedicated "
                 "to the public domain."),
    "ihc": _src("scikit-image", "skimage.data.immunohistochemistry()",
                "Immunohistochemical staining, Center for Microscopy And Molecular Imaging (CMMI). No known "
                "copyright restrictions."),
    "astronaut": _src("scikit-image", "skimage.data.astronaut()",
                      "NASA Great Images database. No known copyright restrictions, released into the public "
                      "domain."),
    "china": _src("scikit-learn", "sklearn.datasets.load_sample_image('china.jpg')",
                  "Creative Commons Attribution 2.0 (https://creativecommons.org/licenses/by/2.0/); "
                  "attribution: 'Some rights reserved by danielbuechele', source "
                  "https://www.flickr.com/photos/danielbuechele/6061409035/; retrieved 21 August 2011 "
                  "by Robert Layton."),
    "flower": _src("scikit-learn", "sklearn.datasets.load_sample_image('flower.jpg')",
                   "Creative Commons Attribution 2.0 (https://creativecommons.org/licenses/by/2.0/); "
                   "attribution as given in scikit-learn's images/README.txt: 'Some rights reserved by "
                   "danielbuechele', source https://www.flickr.com/photos/vultilion/6056698931/; "
                   "retrieved 21 August 2011 by Robert Layton."),
}


def _photo(key: str) -> Image.Image:
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
        import skimage.data as d
        arr = {"chelsea": d.chelsea, "coffee": d.coffee, "horse": d.horse, "moon": d.moon,
               "rocket": d.rocket, "motorcycle": lambda: d.stereo_motorcycle()[0],
               "hubble": d.hubble_deep_field, "retina": d.retina, "camera": d.camera,
               "coins": d.coins, "gravel": d.gravel, "cell": d.cell, "ihc": d.immunohistochemistry,
               "astronaut": d.astronaut}[key]()
    arr = np.asarray(arr)
    if arr.dtype == bool:  # the horse is a boolean silhouette: True = background
        arr = np.where(arr, 255, 0).astype(np.uint8)
    img = Image.fromarray(arr.astype(np.uint8)).convert("RGB")
    w, h = img.size
    scale = PHOTO_MAX_SIDE / max(w, h)
    if scale < 1:
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.LANCZOS)
    return img


# ------------------------------------------------------------------------------------------------
# Drawings (256 x 256, drawn at 512 x 512 and downsampled)
# ------------------------------------------------------------------------------------------------

def _canvas(bg) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    img = Image.new("RGB", (DRAWN_SIZE * _SS, DRAWN_SIZE * _SS), bg)
    return img, ImageDraw.Draw(img)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # very old Pillow: fixed-size bitmap font
        return ImageFont.load_default()


def _text(d: ImageDraw.ImageDraw, xy, s: str, size: int, fill, anchor="mm") -> None:
    d.text(xy, s, font=_font(size), fill=fill, anchor=anchor)


def _done(img: Image.Image) -> Image.Image:
    return img.resize((DRAWN_SIZE, DRAWN_SIZE), Image.LANCZOS)


def _vgrad(size, top, bottom) -> Image.Image:
    w, h = size
    t = np.linspace(0, 1, h)[:, None, None]
    arr = np.asarray(top, np.float64) * (1 - t) + np.asarray(bottom, np.float64) * t
    return Image.fromarray(np.repeat(arr, w, axis=1).round().astype(np.uint8))


def _shield(cx=256, top=70, w=300, h=370):
    x0, x1 = cx - w // 2, cx + w // 2
    pts = [(x0, top), (x1, top), (x1, top + int(h * 0.55))]
    for i in range(1, 20):  # curved lower edge to the point
        a = i / 20 * math.pi / 2
        pts.append((cx + (w // 2) * math.cos(a), top + int(h * 0.55) + (h * 0.45) * math.sin(a)))
    pts.append((cx, top + h))
    for i in range(19, 0, -1):
        a = i / 20 * math.pi / 2
        pts.append((cx - (w // 2) * math.cos(a), top + int(h * 0.55) + (h * 0.45) * math.sin(a)))
    pts.append((x0, top + int(h * 0.55)))
    return pts


def draw_crest_hoops():  # Chelsea Athletic (fictional club): red and white hoops
    img, d = _canvas((228, 230, 234))
    pts = _shield()
    mask = Image.new("L", img.size, 0)
    ImageDraw.Draw(mask).polygon(pts, fill=255)
    hoops = Image.new("RGB", img.size, (255, 255, 255))
    hd = ImageDraw.Draw(hoops)
    for i, y in enumerate(range(70, 460, 48)):
        if i % 2 == 0:
            hd.rectangle([0, y, 512, y + 48], fill=(200, 16, 32))
    img.paste(hoops, (0, 0), mask)
    d.line(pts + [pts[0]], fill=(30, 30, 40), width=10)
    d.ellipse([196, 180, 316, 300], fill=(255, 215, 0), outline=(30, 30, 40), width=6)
    _text(d, (256, 240), "CA", 56, (30, 30, 40))
    return _done(img)


def draw_district_map():  # Chelsea, London: streets, garden squares and the river
    img, d = _canvas((238, 228, 200))
    for x in range(-40, 560, 70):
        d.line([(x, 0), (x + 60, 512)], fill=(255, 255, 255), width=12)
    for y in range(30, 400, 64):
        d.line([(0, y), (512, y - 20)], fill=(255, 255, 255), width=10)
    for box in ([90, 80, 180, 150], [300, 150, 410, 230], [150, 250, 240, 320]):
        d.rectangle(box, fill=(110, 170, 90))
    river = [(0, 400), (80, 380), (170, 420), (260, 455), (350, 430), (440, 390), (512, 405)]
    d.line(river, fill=(80, 140, 205), width=70, joint="curve")
    d.polygon([(0, 440), (512, 440), (512, 512), (0, 512)], fill=(80, 140, 205))
    _text(d, (380, 80), "SW3", 44, (120, 90, 60))
    return _done(img)


def draw_ferry():  # Chelsea (fictional ferry): yellow hull on blue water
    img = _vgrad((512, 512), (170, 215, 245), (120, 180, 230))
    d = ImageDraw.Draw(img)
    d.rectangle([0, 330, 512, 512], fill=(25, 70, 140))
    for y in range(350, 512, 36):
        d.arc([20, y, 140, y + 30], 200, 340, fill=(200, 220, 255), width=4)
        d.arc([300, y + 10, 430, y + 40], 200, 340, fill=(200, 220, 255), width=4)
    d.polygon([(60, 260), (460, 260), (410, 350), (100, 350)], fill=(250, 205, 20))
    d.rectangle([150, 190, 380, 260], fill=(250, 250, 250))
    for x in range(170, 370, 44):
        d.rectangle([x, 208, x + 26, 234], fill=(60, 90, 130))
    d.rectangle([300, 130, 340, 190], fill=(210, 40, 40))
    _text(d, (256, 300), "CHELSEA", 34, (40, 40, 40))
    return _done(img)


def draw_coffee_swatch():  # coffee, the colour: a paint swatch card
    img, d = _canvas((245, 242, 235))
    shades = [(150, 110, 80), (111, 78, 55), (90, 60, 40), (62, 40, 26)]
    for i, c in enumerate(shades):
        d.rectangle([60, 50 + i * 95, 452, 135 + i * 95], fill=c)
    _text(d, (256, 470), "COFFEE  #6F4E37", 30, (60, 40, 26))
    return _done(img)


def draw_cafe_sign():  # Coffee (fictional café): teal sign with a white steaming cup
    img, d = _canvas((0, 120, 125))
    d.rounded_rectangle([30, 30, 482, 482], radius=40, outline=(240, 230, 200), width=12)
    d.pieslice([150, 170, 350, 370], 0, 180, fill=(255, 255, 255))
    d.rectangle([150, 260, 350, 272], fill=(255, 255, 255))
    d.arc([320, 255, 400, 330], 270, 90, fill=(255, 255, 255), width=16)
    d.ellipse([110, 360, 390, 395], fill=(255, 255, 255))
    for x in (205, 250, 295):
        d.arc([x - 20, 110, x + 20, 170], 90, 270, fill=(240, 230, 200), width=8)
        d.arc([x - 20, 60, x + 20, 120], 270, 90, fill=(240, 230, 200), width=8)
    _text(d, (256, 440), "COFFEE", 48, (240, 230, 200))
    return _done(img)


def draw_lyre_sun():  # Apollo, the god: golden sun rays and a lyre on deep blue
    img, d = _canvas((20, 30, 95))
    for k in range(16):
        a = k * math.pi / 8
        d.line([(256 + 150 * math.cos(a), 256 + 150 * math.sin(a)),
                (256 + 240 * math.cos(a), 256 + 240 * math.sin(a))], fill=(240, 190, 40), width=14)
    d.ellipse([116, 116, 396, 396], fill=(250, 215, 80))
    d.arc([176, 150, 336, 380], 0, 180, fill=(120, 70, 10), width=18)
    d.line([(176, 265), (160, 150)], fill=(120, 70, 10), width=18)
    d.line([(336, 265), (352, 150)], fill=(120, 70, 10), width=18)
    d.line([(160, 170), (352, 170)], fill=(120, 70, 10), width=14)
    for x in (216, 246, 276, 306):
        d.line([(x, 170), (x, 370)], fill=(90, 50, 10), width=4)
    return _done(img)


def draw_butterfly():  # Apollo butterfly: white wings, black spots, red eye-spots, on green
    img, d = _canvas((105, 165, 75))
    rng = np.random.default_rng(11)
    for _ in range(60):  # grass blades
        x = int(rng.integers(0, 512))
        d.line([(x, 512), (x + int(rng.integers(-30, 30)), int(rng.integers(380, 470)))],
               fill=(70, 130, 50), width=5)
    d.ellipse([60, 90, 250, 280], fill=(248, 248, 240), outline=(40, 40, 40), width=5)
    d.ellipse([262, 90, 452, 280], fill=(248, 248, 240), outline=(40, 40, 40), width=5)
    d.ellipse([100, 260, 250, 410], fill=(248, 248, 240), outline=(40, 40, 40), width=5)
    d.ellipse([262, 260, 412, 410], fill=(248, 248, 240), outline=(40, 40, 40), width=5)
    for cx, cy in ((140, 160), (372, 160), (190, 210), (322, 210)):
        d.ellipse([cx - 18, cy - 18, cx + 18, cy + 18], fill=(20, 20, 20))
    for cx, cy in ((165, 330), (347, 330)):
        d.ellipse([cx - 34, cy - 34, cx + 34, cy + 34], fill=(20, 20, 20))
        d.ellipse([cx - 26, cy - 26, cx + 26, cy + 26], fill=(215, 30, 30))
        d.ellipse([cx - 8, cy - 8, cx + 8, cy + 8], fill=(255, 255, 255))
    d.rounded_rectangle([244, 110, 268, 400], radius=12, fill=(30, 30, 30))
    d.line([(250, 112), (215, 55)], fill=(30, 30, 30), width=5)
    d.line([(262, 112), (297, 55)], fill=(30, 30, 30), width=5)
    return _done(img)


def draw_cinema():  # Apollo (fictional cinema): red facade, gold marquee, at night
    img, d = _canvas((15, 15, 40))
    d.rectangle([60, 110, 452, 512], fill=(160, 20, 30))
    d.polygon([(40, 230), (472, 230), (440, 300), (72, 300)], fill=(235, 185, 50))
    for x in range(70, 450, 26):
        d.ellipse([x, 236, x + 12, 248], fill=(255, 250, 200))
    _text(d, (256, 272), "APOLLO", 44, (120, 20, 20))
    d.rectangle([200, 380, 312, 512], fill=(60, 10, 10))
    d.rectangle([230, 40, 282, 110], fill=(235, 185, 50))
    for x in (100, 360):
        d.rectangle([x, 150, x + 52, 210], fill=(255, 220, 120))
    return _done(img)


def draw_planet_mercury():  # Mercury, the planet: a cratered grey disc in black space
    img, d = _canvas((5, 5, 10))
    rng = np.random.default_rng(3)
    for _ in range(70):
        x, y = (int(v) for v in rng.integers(0, 512, 2))
        r = int(rng.integers(1, 4))
        d.ellipse([x - r, y - r, x + r, y + r], fill=(230, 230, 240))
    d.ellipse([96, 96, 416, 416], fill=(150, 145, 140))
    for _ in range(28):
        a, rr = rng.uniform(0, 2 * math.pi), rng.uniform(0, 135)
        cx, cy = 256 + rr * math.cos(a), 256 + rr * math.sin(a)
        r = float(rng.uniform(6, 24))
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(115, 110, 105), outline=(175, 170, 165), width=3)
    shade = Image.new("L", img.size, 0)
    ImageDraw.Draw(shade).pieslice([96, 96, 416, 416], 90, 270, fill=90)
    img.paste((5, 5, 10), (0, 0), shade)
    return _done(img)


def draw_element_hg():  # mercury, the element: a periodic-table tile
    img, d = _canvas((205, 208, 215))
    d.rectangle([40, 40, 472, 472], fill=(232, 234, 240), outline=(60, 60, 80), width=12)
    _text(d, (80, 95), "80", 54, (60, 60, 80), anchor="lm")
    _text(d, (256, 250), "Hg", 190, (40, 40, 60))
    _text(d, (256, 385), "Mercury", 50, (60, 60, 80))
    _text(d, (256, 435), "200.59", 36, (90, 90, 110))
    return _done(img)


def draw_winged_helmet():  # Mercury, the god: a golden winged helmet on red
    img, d = _canvas((165, 28, 30))
    d.pieslice([146, 150, 366, 370], 180, 360, fill=(230, 180, 50))
    d.rectangle([136, 252, 376, 282], fill=(200, 150, 30))
    for side in (-1, 1):
        base = 256 + side * 110
        for k in range(4):
            tip = (base + side * (90 + 25 * k), 110 + 35 * k)
            d.polygon([(base, 200 + 12 * k), tip, (base + side * 30, 230 + 12 * k)], fill=(250, 250, 245),
                      outline=(200, 200, 200))
    d.line([(256, 150), (256, 260)], fill=(190, 140, 20), width=8)
    return _done(img)


def draw_orange_van():  # Mercury (fictional couriers): an orange delivery van
    img = _vgrad((512, 512), (215, 225, 235), (235, 235, 235))
    d = ImageDraw.Draw(img)
    d.rectangle([0, 380, 512, 512], fill=(90, 90, 95))
    d.rectangle([0, 440, 512, 450], fill=(240, 240, 240))
    d.rectangle([50, 180, 360, 380], fill=(245, 120, 20))
    d.polygon([(360, 220), (430, 230), (470, 300), (470, 380), (360, 380)], fill=(245, 120, 20))
    d.polygon([(372, 235), (425, 242), (452, 300), (372, 300)], fill=(150, 200, 230))
    for cx in (130, 400):
        d.ellipse([cx - 48, 332, cx + 48, 428], fill=(25, 25, 25))
        d.ellipse([cx - 20, 360, cx + 20, 400], fill=(180, 180, 180))
    _text(d, (205, 265), "MERCURY", 40, (255, 255, 255))
    return _done(img)


def draw_jaguar_rosettes():  # jaguar, the animal: black rosettes on a golden coat
    img, d = _canvas((222, 160, 55))
    rng = np.random.default_rng(7)
    for gy in range(0, 600, 95):
        for gx in range(0, 600, 95):
            cx = gx + (47 if (gy // 95) % 2 else 0) + float(rng.uniform(-15, 15))
            cy = gy + float(rng.uniform(-15, 15))
            r = float(rng.uniform(26, 36))
            d.ellipse([cx - r * 0.55, cy - r * 0.55, cx + r * 0.55, cy + r * 0.55], fill=(190, 120, 35))
            for k in range(6):
                a = k * math.pi / 3 + float(rng.uniform(-0.3, 0.3))
                px, py = cx + r * math.cos(a), cy + r * math.sin(a)
                s = float(rng.uniform(8, 13))
                d.ellipse([px - s, py - s, px + s, py + s], fill=(25, 20, 15))
            d.ellipse([cx - 5, cy - 5, cx + 5, cy + 5], fill=(25, 20, 15))
    return _done(img)


def draw_green_car():  # Jaguar (fictional sports car): a low green coupé
    img = _vgrad((512, 512), (250, 250, 252), (205, 205, 210))
    d = ImageDraw.Draw(img)
    d.rectangle([0, 370, 512, 512], fill=(170, 170, 175))
    body = [(30, 330), (60, 280), (170, 260), (230, 200), (340, 200), (400, 258), (480, 275), (495, 330),
            (470, 355), (40, 355)]
    d.polygon(body, fill=(10, 80, 45))
    d.polygon([(240, 212), (330, 212), (375, 258), (200, 262)], fill=(170, 200, 215))
    d.line([(287, 212), (287, 260)], fill=(10, 80, 45), width=8)
    for cx in (125, 390):
        d.ellipse([cx - 52, 300, cx + 52, 404], fill=(20, 20, 20))
        d.ellipse([cx - 26, 326, cx + 26, 378], fill=(200, 200, 205))
    return _done(img)


def draw_jet():  # SEPECAT Jaguar: a grey swept-wing jet, top view, in blue sky
    img = _vgrad((512, 512), (70, 130, 200), (150, 200, 240))
    d = ImageDraw.Draw(img)
    grey = (110, 115, 120)
    d.polygon([(256, 40), (276, 110), (280, 420), (232, 420), (236, 110)], fill=grey)
    d.polygon([(270, 200), (440, 330), (430, 350), (276, 300)], fill=grey)
    d.polygon([(242, 200), (72, 330), (82, 350), (236, 300)], fill=grey)
    d.polygon([(274, 380), (345, 440), (340, 455), (276, 430)], fill=grey)
    d.polygon([(238, 380), (167, 440), (172, 455), (236, 430)], fill=grey)
    d.ellipse([246, 100, 266, 160], fill=(40, 50, 70))
    for cx, cy in ((360, 300), (152, 300)):
        d.ellipse([cx - 18, cy - 18, cx + 18, cy + 18], fill=(20, 40, 140))
        d.ellipse([cx - 8, cy - 8, cx + 8, cy + 8], fill=(200, 30, 30))
    return _done(img)


def draw_falcon_bird():  # falcon, the bird: a brown silhouette with pointed wings, pale sky
    img = _vgrad((512, 512), (250, 240, 215), (235, 225, 200))
    d = ImageDraw.Draw(img)
    brown, dark = (120, 75, 40), (70, 45, 25)
    d.polygon([(256, 200), (40, 140), (90, 185), (240, 260)], fill=brown)
    d.polygon([(256, 200), (472, 140), (422, 185), (272, 260)], fill=brown)
    d.ellipse([226, 170, 286, 330], fill=dark)
    d.polygon([(236, 310), (276, 310), (296, 400), (216, 400)], fill=brown)
    d.ellipse([236, 140, 276, 190], fill=dark)
    d.polygon([(250, 140), (262, 140), (256, 120)], fill=(230, 180, 40))
    return _done(img)


def draw_crest_purple():  # Falcon Rovers (fictional club): purple shield, white chevron
    img, d = _canvas((245, 240, 250))
    pts = _shield()
    d.polygon(pts, fill=(100, 40, 150), outline=(40, 10, 70))
    d.line(pts + [pts[0]], fill=(40, 10, 70), width=10)
    d.line([(140, 200), (256, 330), (372, 200)], fill=(255, 255, 255), width=44)
    _text(d, (256, 130), "FR", 60, (255, 255, 255))
    return _done(img)


def draw_phone():  # Galaxy (fictional phone): a black phone with a blue screen on white
    img, d = _canvas((242, 242, 246))
    d.rounded_rectangle([146, 30, 366, 482], radius=40, fill=(190, 192, 198))
    d.rounded_rectangle([156, 40, 356, 472], radius=34, fill=(15, 15, 18))
    screen = _vgrad((180, 380), (40, 110, 220), (150, 60, 200))
    img.paste(screen, (166, 66))
    for k in range(12):
        x, y = 186 + (k % 4) * 42, 110 + (k // 4) * 56
        d.rounded_rectangle([x, y, x + 30, y + 30], radius=8, fill=(240, 240, 255))
    d.ellipse([248, 46, 264, 58], fill=(50, 50, 60))
    return _done(img)


def draw_lollipop():  # Galaxy (fictional lollipop): a pink-yellow-white spiral on light blue
    img, d = _canvas((190, 225, 245))
    d.rectangle([244, 300, 268, 500], fill=(250, 250, 250), outline=(200, 200, 200), width=3)
    d.ellipse([106, 70, 406, 370], fill=(255, 255, 255))
    colours = [(240, 80, 150), (250, 210, 40), (255, 255, 255)]
    for k in range(3):
        for i in range(700):
            t = i / 700 * 4 * math.pi
            r = 138 * t / (4 * math.pi)
            a = t + k * 2 * math.pi / 3
            x, y = 256 + r * math.cos(a), 220 + r * math.sin(a)
            d.ellipse([x - 13, y - 13, x + 13, y + 13], fill=colours[k])
    return _done(img)


def draw_ferris_wheel():  # Eye (fictional observation wheel): white wheel, blue sky, water
    img = _vgrad((512, 512), (60, 140, 220), (160, 210, 245))
    d = ImageDraw.Draw(img)
    d.rectangle([0, 440, 512, 512], fill=(30, 80, 130))
    d.ellipse([76, 40, 436, 400], outline=(255, 255, 255), width=10)
    for k in range(16):
        a = k * math.pi / 8
        d.line([(256, 220), (256 + 180 * math.cos(a), 220 + 180 * math.sin(a))], fill=(235, 235, 240), width=4)
        cx, cy = 256 + 180 * math.cos(a), 220 + 180 * math.sin(a)
        d.ellipse([cx - 15, cy - 12, cx + 15, cy + 12], fill=(255, 255, 255), outline=(120, 120, 130))
    d.line([(256, 220), (170, 450)], fill=(240, 240, 240), width=12)
    d.line([(256, 220), (342, 450)], fill=(240, 240, 240), width=12)
    d.ellipse([240, 204, 272, 236], fill=(200, 200, 210))
    return _done(img)


def draw_storm_eye():  # eye of a storm: white spiral cloud bands over dark ocean, a clear centre
    img, d = _canvas((15, 45, 90))
    for k in range(3):
        for i in range(600):
            t = i / 600 * 1.6 * math.pi
            r = 70 + 200 * t / (1.6 * math.pi)
            a = -t + k * 2 * math.pi / 3
            x, y, w = 256 + r * math.cos(a), 256 + r * math.sin(a), 20 - 10 * t / (1.6 * math.pi)
            d.ellipse([x - w, y - w, x + w, y + w], fill=(235, 240, 245))
    d.ellipse([166, 166, 346, 346], outline=(245, 248, 250), width=48)
    d.ellipse([206, 206, 306, 306], fill=(20, 60, 110))
    return _done(img)


def draw_mint_leaves():  # mint, the herb: serrated green leaves on white
    img, d = _canvas((250, 252, 248))
    d.line([(256, 500), (256, 60)], fill=(70, 120, 50), width=12)
    for y, side in (((380, -1), (380, 1), (270, -1), (270, 1), (160, -1), (160, 1))):
        leaf = Image.new("RGBA", (200, 110), (0, 0, 0, 0))
        ld = ImageDraw.Draw(leaf)
        ld.ellipse([0, 0, 199, 109], fill=(60, 150, 60, 255))
        for x in range(10, 190, 18):  # serrations
            ld.polygon([(x, 2), (x + 9, -6), (x + 18, 4)], fill=(60, 150, 60, 255))
        ld.line([(10, 55), (190, 55)], fill=(150, 210, 130, 255), width=4)
        for x in range(40, 180, 35):
            ld.line([(x, 55), (x + 20, 20)], fill=(150, 210, 130, 255), width=3)
            ld.line([(x, 55), (x + 20, 90)], fill=(150, 210, 130, 255), width=3)
        leaf = leaf.rotate(25 if side > 0 else -25, expand=True, resample=Image.BICUBIC)
        if side < 0:
            leaf = ImageOps.mirror(leaf)
        x = 256 if side > 0 else 256 - leaf.width
        img.paste(leaf, (x, y - leaf.height // 2), leaf)
    d.ellipse([216, 30, 296, 110], fill=(80, 170, 70))
    return _done(img)


def draw_mint_sweets():  # Mint (fictional sweets): white round mints in a blue tin with a red rim
    img, d = _canvas((235, 225, 210))
    d.ellipse([36, 36, 476, 476], fill=(200, 30, 40))
    d.ellipse([66, 66, 446, 446], fill=(30, 70, 170))
    for cx, cy in ((200, 190), (310, 190), (150, 290), (256, 290), (362, 290), (200, 380), (310, 380)):
        d.ellipse([cx - 46, cy - 46, cx + 46, cy + 46], fill=(250, 250, 250), outline=(200, 205, 215), width=4)
        d.line([(cx - 20, cy), (cx + 20, cy)], fill=(215, 220, 230), width=5)
    _text(d, (256, 110), "MINT", 44, (255, 255, 255))
    return _done(img)


def draw_guitar():  # rock music: a red electric guitar on black
    img, _ = _canvas((12, 12, 14))
    guitar = Image.new("RGBA", (512, 512), (0, 0, 0, 0))
    g = ImageDraw.Draw(guitar)
    g.ellipse([146, 300, 366, 500], fill=(200, 20, 25, 255))
    g.ellipse([171, 210, 341, 370], fill=(200, 20, 25, 255))
    g.rectangle([240, 20, 272, 330], fill=(120, 70, 30, 255))
    g.rectangle([230, 0, 282, 50], fill=(30, 30, 30, 255))
    g.rectangle([196, 380, 316, 396], fill=(230, 230, 230, 255))
    g.rectangle([216, 300, 296, 318], fill=(240, 240, 240, 255))
    for x in (246, 252, 258, 264):
        g.line([(x, 20), (x, 420)], fill=(235, 235, 200, 255), width=2)
    guitar = guitar.rotate(-30, resample=Image.BICUBIC, center=(256, 300))
    img.paste(guitar, (0, -20), guitar)
    return _done(img)


def draw_seaside_rock():  # rock, the seaside sweet: pink sticks with lettered white ends
    img, d = _canvas((250, 235, 200))
    for x in (90, 230, 370):
        d.rectangle([x, 140, x + 90, 470], fill=(240, 110, 160))
        d.line([(x + 8, 140), (x + 8, 470)], fill=(255, 170, 200), width=6)
        d.ellipse([x, 100, x + 90, 180], fill=(255, 250, 250), outline=(240, 110, 160), width=8)
        _text(d, (x + 45, 140), "ROCK", 24, (210, 20, 60))
    return _done(img)


def draw_battery():  # cell, the battery: an AA cell on pale yellow
    img, d = _canvas((250, 240, 170))
    d.rounded_rectangle([196, 100, 316, 450], radius=18, fill=(25, 25, 25))
    d.rounded_rectangle([196, 100, 316, 200], radius=18, fill=(200, 150, 40))
    d.rectangle([196, 180, 316, 200], fill=(200, 150, 40))
    d.rectangle([236, 76, 276, 100], fill=(180, 180, 185))
    _text(d, (256, 150), "+", 70, (25, 25, 25))
    _text(d, (256, 320), "1.5V", 40, (230, 230, 230))
    return _done(img)


def draw_prison_bars():  # cell, the prison room: grey wall, iron bars, small window
    img, d = _canvas((140, 138, 132))
    for y in range(0, 512, 40):
        off = 0 if (y // 40) % 2 == 0 else 40
        for x in range(-off, 512, 80):
            d.rectangle([x, y, x + 78, y + 38], outline=(120, 118, 112), width=3)
    d.rectangle([196, 50, 316, 150], fill=(200, 220, 240))
    for x in range(206, 316, 26):
        d.line([(x, 50), (x, 150)], fill=(40, 40, 40), width=6)
    for x in range(40, 512, 56):
        d.rectangle([x, 190, x + 16, 512], fill=(35, 35, 38))
    d.rectangle([0, 200, 512, 218], fill=(35, 35, 38))
    return _done(img)


def draw_weaving_shuttle():  # shuttle, the weaving tool: a wooden shuttle over warp threads
    img, d = _canvas((230, 215, 185))
    palette = [(180, 60, 50), (230, 200, 120), (60, 90, 150)]
    for i, x in enumerate(range(0, 512, 14)):
        d.line([(x, 0), (x, 512)], fill=palette[i % 3], width=6)
    body = [(40, 256)]
    for i in range(1, 40):
        t = i / 40
        body.append((40 + 432 * t, 256 - 70 * math.sin(math.pi * t)))
    body.append((472, 256))
    for i in range(39, 0, -1):
        t = i / 40
        body.append((40 + 432 * t, 256 + 70 * math.sin(math.pi * t)))
    d.polygon(body, fill=(150, 95, 45), outline=(90, 55, 25))
    d.rounded_rectangle([170, 226, 342, 286], radius=20, fill=(90, 55, 25))
    d.rectangle([180, 248, 332, 264], fill=(245, 240, 220))
    return _done(img)


def draw_shuttle_bus():  # shuttle bus: a blue bus on a road
    img = _vgrad((512, 512), (200, 230, 250), (245, 250, 255))
    d = ImageDraw.Draw(img)
    d.rectangle([0, 390, 512, 512], fill=(80, 80, 85))
    d.rounded_rectangle([30, 170, 482, 400], radius=26, fill=(20, 90, 200))
    for x in range(60, 440, 70):
        d.rectangle([x, 200, x + 52, 262], fill=(210, 235, 250))
    d.rectangle([420, 200, 470, 330], fill=(210, 235, 250))
    _text(d, (220, 310), "SHUTTLE", 46, (255, 255, 255))
    for cx in (120, 390):
        d.ellipse([cx - 42, 358, cx + 42, 442], fill=(25, 25, 25))
        d.ellipse([cx - 16, 384, cx + 16, 416], fill=(170, 170, 175))
    return _done(img)


def draw_wool_hat():  # pompom on a knitted hat: red-and-white hat, big white pompom
    img, d = _canvas((200, 225, 240))
    d.pieslice([96, 160, 416, 500], 180, 360, fill=(200, 30, 40))
    for y in (250, 290):
        d.rectangle([96 + (330 - y) // 2, y, 416 - (330 - y) // 2, y + 18], fill=(250, 250, 250))
    d.rounded_rectangle([86, 320, 426, 400], radius=20, fill=(250, 250, 250))
    for x in range(100, 420, 22):
        d.line([(x, 328), (x, 392)], fill=(220, 220, 225), width=6)
    rng = np.random.default_rng(5)
    d.ellipse([196, 60, 316, 180], fill=(250, 250, 250))
    for _ in range(120):
        a, r = rng.uniform(0, 2 * math.pi), rng.uniform(40, 68)
        x, y = 256 + r * math.cos(a), 120 + r * math.sin(a)
        d.line([(256 + 30 * math.cos(a), 120 + 30 * math.sin(a)), (x, y)], fill=(225, 225, 230), width=3)
    return _done(img)


def draw_cheer_pompoms():  # cheerleading pompoms: gold and blue strands on white
    img, d = _canvas((252, 252, 252))
    rng = np.random.default_rng(9)
    for cx, cy, col in ((180, 220, (240, 190, 20)), (340, 300, (30, 60, 200))):
        for _ in range(260):
            a, r = rng.uniform(0, 2 * math.pi), rng.uniform(90, 150)
            shade = tuple(int(min(255, c * rng.uniform(0.8, 1.2))) for c in col)
            d.line([(cx, cy), (cx + r * math.cos(a), cy + r * math.sin(a))], fill=shade, width=4)
    d.rectangle([250, 440, 280, 512], fill=(60, 60, 60))
    return _done(img)


def draw_lantern():  # Pagoda (fictional restaurant): a red paper lantern at night
    img, d = _canvas((10, 10, 25))
    d.line([(256, 0), (256, 90)], fill=(200, 170, 60), width=6)
    d.rectangle([196, 80, 316, 110], fill=(210, 170, 40))
    d.ellipse([106, 95, 406, 405], fill=(215, 25, 30))
    for x0 in (150, 196, 236):
        d.arc([x0, 95, 512 - x0, 405], 0, 360, fill=(170, 15, 20), width=5)
    d.rectangle([196, 390, 316, 420], fill=(210, 170, 40))
    for x in range(236, 280, 8):
        d.line([(x, 420), (x, 490)], fill=(230, 60, 40), width=4)
    _text(d, (256, 250), "PAGODA", 40, (255, 215, 90))
    return _done(img)


def draw_pagoda_coin():  # pagoda, the gold coin: a small gold coin on dark velvet
    img, d = _canvas((45, 20, 60))
    d.ellipse([116, 116, 396, 396], fill=(215, 170, 40), outline=(160, 115, 20), width=10)
    d.ellipse([146, 146, 366, 366], outline=(240, 200, 80), width=5)
    for k, w in enumerate((150, 110, 70)):  # an embossed tiered tower
        y = 310 - k * 50
        d.polygon([(256 - w // 2, y), (256 + w // 2, y), (256 + w // 3, y - 30), (256 - w // 3, y - 30)],
                  fill=(185, 140, 30))
    d.polygon([(246, 180), (266, 180), (256, 160)], fill=(185, 140, 30))
    return _done(img)


DRAWINGS = {name[5:]: fn for name, fn in globals().items() if name.startswith("draw_") and callable(fn)}


# ------------------------------------------------------------------------------------------------
# The entities. images: ("photo", key) -> images/<key>.jpg ; ("draw", key) -> images/<key>.png
# ------------------------------------------------------------------------------------------------

def _e(eid, name, aliases, text, *images):
    return {"id": eid, "name": name, "aliases": list(aliases), "text": text, "images": list(images)}


def P(key: str) -> tuple[str, str]:
    return "photo", key


def D(key: str) -> tuple[str, str]:
    return "draw", key

ENTITIES: list[dict] = [
    # --- Chelsea -------------------------------------------------------------------------------
    _e("D001", "Chelsea", ["Chelsea the cat"],
       "A tabby cat called Chelsea whose portrait is a well-known sample photograph in image-processing "
       "libraries. She has striped brown and grey fur.", P("chelsea")),
    _e("D002", "Chelsea", ["Chelsea Athletic"],
       "Chelsea Athletic, a fictional amateur football club from the demo town of Northbridge. The club "
       "plays in red and white hoops and has a shield for a crest.", D("crest_hoops")),
    _e("D003", "Chelsea", ["Chelsea, London"],
       "A district of west London on the north bank of the River Thames, known for its terraced streets "
       "and garden squares.", D("district_map")),
    _e("D004", "Chelsea", ["Chelsea (ferry)"],
       "Chelsea, a fictional passenger ferry with a yellow hull that crosses Northbridge harbour several "
       "times a day.", D("ferry")),
    # --- Coffee --------------------------------------------------------------------------------
    _e("D005", "Coffee", ["coffee (drink)"],
       "A hot drink brewed from roasted and ground coffee beans, often served as espresso or with milk "
       "in a cup and saucer.", P("coffee")),
    _e("D006", "Coffee", ["Coffee (racehorse)"],
       "Coffee, a fictional racehorse from the Northbridge stories, known for strong finishes over long "
       "distances.", P("horse")),
    _e("D007", "Coffee", ["coffee (colour)", "coffee brown"],
       "A dark brown colour named after roasted coffee, used for paints, fabrics and furniture finishes.",
       D("coffee_swatch")),
    _e("D008", "Coffee", ["Coffee (café)"],
       "Coffee, a fictional café on the Northbridge market square. Its teal sign shows a white steaming "
       "cup.", D("cafe_sign")),
    # --- Apollo --------------------------------------------------------------------------------
    _e("D009", "Apollo", ["Apollo program", "Project Apollo"],
       "The NASA human spaceflight programme that landed astronauts on the Moon between 1969 and 1972.",
       P("moon")),
    _e("D010", "Apollo", ["Apollo (god)", "Phoebus"],
       "A god of ancient Greek and Roman religion associated with music, poetry, prophecy, archery and "
       "the light of the sun.", D("lyre_sun")),
    _e("D011", "Apollo", ["Apollo butterfly", "Parnassius apollo"],
       "A large white butterfly of mountain meadows in Europe and Asia, with black spots on the "
       "forewings and red eye-spots on the hindwings.", D("butterfly")),
    _e("D012", "Apollo", ["Apollo Cinema"],
       "Apollo, a fictional single-screen cinema on the Northbridge high street with a red facade and a "
       "gold marquee.", D("cinema")),
    # --- Mercury -------------------------------------------------------------------------------
    _e("D013", "Mercury", ["Mercury (planet)"],
       "The smallest planet of the Solar System and the closest to the Sun. Its grey surface is heavily "
       "cratered.", D("planet_mercury")),
    _e("D014", "Mercury", ["mercury (element)", "Hg", "quicksilver"],
       "A chemical element with symbol Hg and atomic number 80: a silvery metal that is liquid at room "
       "temperature.", D("element_hg")),
    _e("D015", "Mercury", ["Mercury (god)"],
       "The Roman god of messages, trade and travellers, usually shown with a winged hat and winged "
       "sandals.", D("winged_helmet")),
    _e("D016", "Mercury", ["Mercury Couriers"],
       "Mercury, a fictional courier company in Northbridge whose delivery vans are painted bright "
       "orange.", D("orange_van")),
    # --- Jaguar --------------------------------------------------------------------------------
    _e("D017", "Jaguar", ["jaguar (animal)", "Panthera onca"],
       "A large wild cat of Central and South America with a golden coat covered in black rosettes.",
       D("jaguar_rosettes")),
    _e("D018", "Jaguar", ["Jaguar (sports car)"],
       "Jaguar, a fictional two-door sports car model from the Northbridge stories, usually sold in dark "
       "green.", D("green_car")),
    _e("D019", "Jaguar", ["SEPECAT Jaguar"],
       "A twin-engine jet attack aircraft developed jointly by Britain and France in the 1960s.",
       D("jet")),
    # --- Falcon --------------------------------------------------------------------------------
    _e("D020", "Falcon", ["Falcon 9"],
       "A two-stage orbital launch rocket built by SpaceX whose first stage is designed to land and be "
       "reused.", P("rocket")),
    _e("D021", "Falcon", ["falcon (bird)"],
       "A fast bird of prey with long pointed wings that often catches other birds in flight.",
       D("falcon_bird")),
    _e("D022", "Falcon", ["Falcon Rovers"],
       "Falcon Rovers, a fictional amateur football club in the Northbridge league that plays in purple.",
       D("crest_purple")),
    _e("D023", "Falcon", ["Falcon (motorcycle)"],
       "Falcon, the nickname of a fictional red cruiser motorcycle kept in a workshop garage in the "
       "Northbridge stories.", P("motorcycle")),
    # --- Galaxy --------------------------------------------------------------------------------
    _e("D024", "Galaxy", ["galaxy (astronomy)"],
       "A huge system of stars, gas and dust held together by gravity. Deep telescope images show "
       "thousands of them as small smudges of light.", P("hubble")),
    _e("D025", "Galaxy", ["Galaxy (phone)"],
       "Galaxy, a fictional smartphone model from the Northbridge stories with a black glass front and a "
       "silver frame.", D("phone")),
    _e("D026", "Galaxy", ["Galaxy (lollipop)"],
       "Galaxy, a fictional brand of swirl lollipop with pink, yellow and white spirals.", D("lollipop")),
    # --- Eye -----------------------------------------------------------------------------------
    _e("D027", "Eye", ["eye (organ)"],
       "The organ of sight. A photograph of the back of the eye shows the retina, the optic disc and "
       "the blood vessels.", P("retina")),
    _e("D028", "Eye", ["Northbridge Eye"],
       "Eye, a fictional observation wheel on the Northbridge waterfront with white passenger capsules.",
       D("ferris_wheel")),
    _e("D029", "Eye", ["eye of the storm"],
       "The calm, nearly cloudless centre of a tropical cyclone, surrounded by a ring of thunderstorms.",
       D("storm_eye")),
    _e("D030", "Eye", ["Eye Photo Club"],
       "Eye, a fictional amateur photography club from Northbridge whose members shoot outdoors with "
       "tripod-mounted cameras.", P("camera")),
    # --- Mint ----------------------------------------------------------------------------------
    _e("D031", "Mint", ["mint (herb)", "Mentha"],
       "An aromatic herb with serrated green leaves, used fresh in teas, sauces and desserts.",
       D("mint_leaves")),
    _e("D032", "Mint", ["mint (coin factory)"],
       "A facility that strikes coins from metal blanks, for circulation or for collectors.", P("coins")),
    _e("D033", "Mint", ["Mint (sweets)"],
       "Mint, a fictional brand of round white peppermint sweets sold in a blue tin with a red rim.",
       D("mint_sweets")),
    # --- Rock ----------------------------------------------------------------------------------
    _e("D034", "Rock", ["rock (geology)", "stone"],
       "Naturally occurring solid mineral matter. Broken into small pieces it forms gravel.", P("gravel")),
    _e("D035", "Rock", ["rock music"],
       "A genre of popular music built around electric guitars, bass guitar and drums.", D("guitar")),
    _e("D036", "Rock", ["seaside rock", "stick of rock"],
       "A hard stick-shaped sweet sold at seaside resorts, pink on the outside with letters running "
       "through it.", D("seaside_rock")),
    # --- Cell ----------------------------------------------------------------------------------
    _e("D037", "Cell", ["cell (biology)"],
       "The basic structural unit of living organisms, enclosed by a membrane. Under a microscope cells "
       "are seen alone or packed together in tissues.", P("cell"), P("ihc")),
    _e("D038", "Cell", ["electrochemical cell", "battery cell"],
       "An electrochemical cell that stores energy and delivers it as electric current, such as an AA "
       "battery.", D("battery")),
    _e("D039", "Cell", ["prison cell"],
       "A small room in a prison in which an inmate is held, closed by a barred door.", D("prison_bars")),
    # --- Shuttle -------------------------------------------------------------------------------
    _e("D040", "Shuttle", ["Space Shuttle"],
       "NASA's partly reusable crewed spacecraft, flown from 1981 to 2011, which launched like a rocket "
       "and landed like a glider.", P("astronaut")),
    _e("D041", "Shuttle", ["shuttle (weaving)"],
       "A boat-shaped tool that carries the weft thread back and forth between the warp threads on a "
       "loom.", D("weaving_shuttle")),
    _e("D042", "Shuttle", ["shuttle bus"],
       "A bus that runs back and forth over a short fixed route, for example between an airport "
       "terminal and a car park.", D("shuttle_bus")),
    # --- Pompom --------------------------------------------------------------------------------
    _e("D043", "Pompom", ["pompon dahlia", "pompon"],
       "A dahlia with small, very round flower heads made of tightly curled petals.", P("flower")),
    _e("D044", "Pompom", ["pompom (hat)", "bobble"],
       "A small ball of wool or yarn sewn on top of a knitted hat as decoration.", D("wool_hat")),
    _e("D045", "Pompom", ["cheerleading pompom", "pom-pom"],
       "A bundle of shiny plastic strands that cheerleaders shake and wave.", D("cheer_pompoms")),
    # --- Pagoda --------------------------------------------------------------------------------
    _e("D046", "Pagoda", ["pagoda (building)"],
       "A tiered tower with several projecting eaves, common in East Asian temple and palace "
       "architecture.", P("china")),
    _e("D047", "Pagoda", ["Pagoda (restaurant)"],
       "Pagoda, a fictional restaurant in Northbridge whose sign is a red paper lantern.", D("lantern")),
    _e("D048", "Pagoda", ["pagoda (coin)"],
       "A small gold coin formerly struck in southern India.", D("pagoda_coin")),
]

# ------------------------------------------------------------------------------------------------
# Example mentions: (sentence, mention, answer, query image spec or None)
# A query spec is (image index in the entity's list, [operations]); operations:
#   ("crop", l, t, r, b) fractions · ("flip",) · ("rot", degrees) · ("jitter", brightness, contrast, colour)
# ------------------------------------------------------------------------------------------------

EXAMPLES: list[tuple[str, str, str, tuple | None]] = [
    ("Chelsea fell asleep on the windowsill again.", "Chelsea", "D001",
     (0, [("crop", 0.15, 0.0, 0.85, 0.9), ("flip",)])),
    ("We finally made it to Chelsea on Saturday.", "Chelsea", "D003",
     (0, [("crop", 0.1, 0.1, 0.9, 0.95), ("jitter", 1.05, 0.9, 1.1)])),
    ("Chelsea won 2-1 after a late goal in the second half.", "Chelsea", "D002", None),
    ("Here is Chelsea, just as I remembered it.", "Chelsea", "D004",
     (0, [("rot", 8), ("crop", 0.05, 0.1, 0.95, 0.95)])),
    ("A coffee before the meeting, as always.", "coffee", "D005",
     (0, [("crop", 0.2, 0.05, 0.8, 0.85), ("jitter", 1.1, 1.1, 0.9)])),
    ("Coffee was the favourite in the third race.", "Coffee", "D006", None),
    ("I would call this shade coffee rather than chocolate.", "coffee", "D007",
     (0, [("crop", 0.05, 0.0, 0.95, 0.7)])),
    ("Meet me at Coffee at noon.", "Coffee", "D008", (0, [("rot", -6), ("jitter", 0.9, 1.0, 1.2)])),
    ("Apollo, as seen in this picture.", "Apollo", "D009", (0, [("crop", 0.1, 0.1, 0.8, 0.8), ("rot", 90)])),
    ("A statue of Apollo holding a lyre stood in the temple.", "Apollo", "D010", None),
    ("We spotted an Apollo in the alpine meadow.", "Apollo", "D011",
     (0, [("crop", 0.05, 0.1, 0.95, 0.9), ("rot", -10)])),
    ("The queue outside the Apollo went round the block.", "Apollo", "D012",
     (0, [("jitter", 1.2, 1.1, 0.9), ("crop", 0.0, 0.2, 1.0, 1.0)])),
    ("Mercury is hard to spot.", "Mercury", "D013", (0, [("crop", 0.1, 0.1, 0.9, 0.9), ("rot", 35)])),
    ("Old thermometers were filled with mercury.", "mercury", "D014", None),
    ("A small bronze of Mercury was found in the villa.", "Mercury", "D015",
     (0, [("flip",), ("crop", 0.1, 0.1, 0.9, 0.85)])),
    ("Mercury showed up just after lunch.", "Mercury", "D016", (0, [("crop", 0.0, 0.25, 1.0, 0.95)])),
    ("A jaguar crossed the road in front of us.", "jaguar", "D017",
     (0, [("crop", 0.2, 0.2, 0.8, 0.8), ("jitter", 0.9, 1.1, 1.1)])),
    ("The Jaguar was parked outside the hotel.", "Jaguar", "D018", (0, [("flip",), ("rot", 5)])),
    ("Two Jaguar jets flew low over the airfield.", "Jaguar", "D019", None),
    ("The Falcon lifted off at dawn.", "Falcon", "D020", (0, [("crop", 0.25, 0.0, 0.85, 1.0)])),
    ("A falcon circled above the cliffs.", "falcon", "D021", (0, [("flip",), ("crop", 0.05, 0.15, 0.95, 0.85)])),
    ("Falcon clinched promotion on the final day of the season.", "Falcon", "D022", None),
    ("The Falcon is back in the garage after its repair.", "Falcon", "D023",
     (0, [("crop", 0.1, 0.15, 0.95, 0.95), ("jitter", 1.1, 1.0, 1.0)])),
    ("That galaxy is barely visible.", "galaxy", "D024", (0, [("crop", 0.3, 0.3, 0.8, 0.8)])),
    ("My new Galaxy arrived today.", "Galaxy", "D025", (0, [("rot", -12), ("crop", 0.1, 0.05, 0.9, 0.95)])),
    ("The kids each got a Galaxy at the fair.", "Galaxy", "D026", (0, [("rot", 20), ("jitter", 1.0, 1.0, 1.3)])),
    ("Have a look at this eye.", "eye", "D027", (0, [("crop", 0.15, 0.15, 0.85, 0.85), ("flip",)])),
    ("We rode the Eye at sunset.", "Eye", "D028", (0, [("jitter", 0.8, 1.2, 1.0), ("crop", 0.05, 0.0, 0.95, 0.9)])),
    ("The eye passed directly over the island at midnight.", "eye", "D029", None),
    ("Eye meets every Sunday in the park.", "Eye", "D030", (0, [("crop", 0.0, 0.1, 0.8, 0.9)])),
    ("Add a handful of mint.", "mint", "D031", (0, [("crop", 0.1, 0.2, 0.9, 0.9), ("rot", 15)])),
    ("The mint struck a new series of silver coins this year.", "mint", "D032", None),
    ("She handed me a Mint.", "Mint", "D033", (0, [("crop", 0.15, 0.15, 0.85, 0.85)])),
    ("Rock like this covers the whole path.", "Rock", "D034", (0, [("crop", 0.3, 0.3, 0.9, 0.9), ("rot", 90)])),
    ("He has played rock since he was fifteen.", "rock", "D035", (0, [("flip",), ("jitter", 1.1, 1.0, 1.0)])),
    ("We bought a stick of rock on the pier.", "rock", "D036", None),
    ("Look at this cell.", "cell", "D037", (1, [("crop", 0.2, 0.2, 0.8, 0.8)])),
    ("One cell is enough.", "cell", "D038", (0, [("rot", 30), ("crop", 0.1, 0.1, 0.9, 0.9)])),
    ("Every cell in the block had a small barred window.", "cell", "D039", None),
    ("The shuttle is ready.", "shuttle", "D040", (0, [("crop", 0.6, 0.0, 1.0, 0.6)])),
    ("Pass me the shuttle.", "shuttle", "D041", (0, [("flip",), ("crop", 0.0, 0.2, 1.0, 0.8)])),
    ("The shuttle leaves every twenty minutes from terminal 2.", "shuttle", "D042", None),
    ("What a pompom!", "pompom", "D043", (0, [("crop", 0.2, 0.1, 0.75, 0.9), ("jitter", 1.05, 1.1, 1.1)])),
    ("Her hat had a huge pompom on top.", "pompom", "D044", None),
    ("The pompom caught the light.", "pompom", "D045", (0, [("rot", -25)])),
    ("The pagoda is visible from across the lake.", "pagoda", "D046", (0, [("crop", 0.0, 0.0, 0.6, 1.0)])),
    ("Dinner at the Pagoda tonight?", "Pagoda", "D047", (0, [("jitter", 1.2, 1.0, 1.0), ("crop", 0.1, 0.0, 0.9, 0.9)])),
    ("He paid with a single gold pagoda.", "pagoda", "D048", None),
]


def ambiguity_groups(entities: list[dict] | None = None) -> dict[str, list[str]]:
    """Shared name -> ids of the entities that carry it (only names shared by >= 2 entities)."""
    groups: dict[str, list[str]] = {}
    for e in entities or ENTITIES:
        groups.setdefault(e["name"], []).append(e["id"])
    return {n: ids for n, ids in groups.items() if len(ids) >= 2}


# ------------------------------------------------------------------------------------------------
# Building
# ------------------------------------------------------------------------------------------------

def _image_file(kind: str, key: str) -> str:
    return f"images/{key}.jpg" if kind == "photo" else f"images/{key}.png"


def _apply(img: Image.Image, ops) -> Image.Image:
    for op in ops:
        if op[0] == "crop":
            w, h = img.size
            img = img.crop((round(op[1] * w), round(op[2] * h), round(op[3] * w), round(op[4] * h)))
        elif op[0] == "flip":
            img = ImageOps.mirror(img)
        elif op[0] == "rot":
            fill = tuple(int(v) for v in np.asarray(img).reshape(-1, 3).mean(axis=0).round())
            img = img.rotate(op[1], resample=Image.BICUBIC, expand=op[1] % 90 == 0, fillcolor=fill)
        elif op[0] == "jitter":
            img = ImageEnhance.Brightness(img).enhance(op[1])
            img = ImageEnhance.Contrast(img).enhance(op[2])
            img = ImageEnhance.Color(img).enhance(op[3])
        else:
            raise ValueError(f"unknown query-image operation {op!r}")
    w, h = img.size
    scale = QUERY_MAX_SIDE / max(w, h)
    if scale < 1:
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.LANCZOS)
    return img


def _save(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jpg":
        img.save(path, "JPEG", quality=JPEG_QUALITY, optimize=True)
    else:
        img.save(path, "PNG", optimize=True)


def _jsonl(path: Path, rows) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def _readme(used_photos: list[str], drawn: list[tuple[str, str]]) -> str:
    lines = [
        "# Demo knowledge base",
        "",
        "Generated by `assets.demo_builder.build.build_demo_assets()` (regenerate with",
        "`python -m assets.demo_builder`;",
        "needs scikit-image and scikit-learn for the sample photos). Do not edit by hand.",
        "",
        (f"* `kb.jsonl`: {len(ENTITIES)} entities in {len(ambiguity_groups())} groups that share a name "
         "(project JSONL KB format, `mimic.data.kb_files.load_kb`)."),
        (f"* `examples.jsonl`: {len(EXAMPLES)} example mentions; the folder also loads as a dataset with a "
         "split named `examples` (`mimic.data.formats.load_jsonl_dataset`)."),
        ("* `images/`: entity images; `query_images/`: the examples' query images, other views (crop, "
         "mirror, rotation, colour change) of the gold entity's image."),
        "",
        ("All entity descriptions were written for this project. Named organisations and products "
         "(cafés, clubs, cinemas, vehicles, the town of Northbridge) are fictional unless the "
         "description says otherwise."),
        "",
        "## Photographs (public sample images shipped with scikit-image and scikit-learn)",
        "",
        ("Resized to at most 320 px on the long side and saved as JPEG (quality 85). Licence and "
         "source notes as given in the packages' own documentation (`skimage.data` docstrings, "
         "scikit-learn's `datasets/images/README.txt`)."),
        "",
        "| file | package | loaded with | licence / source note |",
        "|---|---|---|---|",
    ]
    for key in used_photos:
        pkg, how, note = PHOTOS[key]
        lines.append(f"| `images/{key}.jpg` | {pkg} | `{how}` | {note} |")
    lines += [
        "",
        "## Drawings (made by `mimic/demo.py`, part of this project)",
        "",
        "256 x 256 PNG, drawn with PIL by the function named in the table.",
        "",
        "| file | drawn by | entity |",
        "|---|---|---|",
    ]
    for key, eid in drawn:
        lines.append(f"| `images/{key}.png` | `assets.demo_builder.build.draw_{key}` | {eid} |")
    lines += [
        "",
        "## Query images",
        "",
        ("`query_images/X??.jpg` are derived by `assets.demo_builder.build` from the gold entity's image above and carry "
         "that image's licence."),
        "",
    ]
    return "\n".join(lines)


def build_demo_assets(out_dir: str | Path = "assets/demo_kb", overwrite: bool = False) -> Path:
    """(Re)generate the whole demo KB folder deterministically; return its path.

    Builds in a temporary sibling folder and renames it into place (`mimic.atomic.atomic_dir`), so
    an existing folder is replaced only when `overwrite` is true and only by a complete new one.
    Needs scikit-image and scikit-learn (their sample photos); raises ImportError without them.
    """
    from mimic.atomic import atomic_dir

    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists (pass overwrite=True to replace it)")
    rendered: dict[tuple[str, str], Image.Image] = {}
    for e in ENTITIES:
        for kind, key in e["images"]:
            if (kind, key) not in rendered:
                rendered[(kind, key)] = _photo(key) if kind == "photo" else DRAWINGS[key]()
    by_id = {e["id"]: e for e in ENTITIES}
    with atomic_dir(out, overwrite) as tmp:
        for (kind, key), img in rendered.items():
            _save(img, tmp / _image_file(kind, key))
        _jsonl(tmp / "kb.jsonl", ({"id": e["id"], "name": e["name"], "aliases": e["aliases"], "text": e["text"],
                                   "images": [_image_file(k, v) for k, v in e["images"]]} for e in ENTITIES))
        rows = []
        for n, (sentence, mention, answer, query) in enumerate(EXAMPLES, 1):
            xid = f"X{n:02d}"
            start = sentence.find(mention)
            if start < 0:
                raise ValueError(f"{xid}: mention {mention!r} not in {sentence!r}")
            image = None
            if query is not None:
                idx, ops = query
                src = rendered[tuple(by_id[answer]["images"][idx])]
                image = f"query_images/{xid}.jpg"
                _save(_apply(src, ops), tmp / image)
            rows.append({"id": xid, "sentence": sentence, "mention": mention, "start": start,
                         "end": start + len(mention), "image": image, "answer": answer})
        _jsonl(tmp / "examples.jsonl", rows)
        photos = [k for kind, k in rendered if kind == "photo"]
        drawn = [(k, next(e["id"] for e in ENTITIES if ("draw", k) in e["images"]))
                 for kind, k in rendered if kind == "draw"]
        (tmp / "README.md").write_text(_readme(photos, drawn), encoding="utf-8", newline="\n")
    return out
