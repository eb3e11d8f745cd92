"""The demo KB's drawings: 256 x 256 images drawn with PIL, one function per image.

Each is drawn at 512 x 512 and downsampled (anti-aliasing without randomness), so the output is
byte-for-byte reproducible. `DRAWINGS` maps an image key (its file name) to its function.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

DRAWN_SIZE = 256
_SS = 2  # drawings are made at 2x and downsampled (anti-aliasing without randomness)


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
        d.line(
            [(256 + 150 * math.cos(a), 256 + 150 * math.sin(a)), (256 + 240 * math.cos(a), 256 + 240 * math.sin(a))],
            fill=(240, 190, 40),
            width=14,
        )
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
        d.line([(x, 512), (x + int(rng.integers(-30, 30)), int(rng.integers(380, 470)))], fill=(70, 130, 50), width=5)
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
            d.polygon(
                [(base, 200 + 12 * k), tip, (base + side * 30, 230 + 12 * k)],
                fill=(250, 250, 245),
                outline=(200, 200, 200),
            )
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
    body = [
        (30, 330),
        (60, 280),
        (170, 260),
        (230, 200),
        (340, 200),
        (400, 258),
        (480, 275),
        (495, 330),
        (470, 355),
        (40, 355),
    ]
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
    for y, side in ((380, -1), (380, 1), (270, -1), (270, 1), (160, -1), (160, 1)):
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
        d.polygon(
            [(256 - w // 2, y), (256 + w // 2, y), (256 + w // 3, y - 30), (256 - w // 3, y - 30)], fill=(185, 140, 30)
        )
    d.polygon([(246, 180), (266, 180), (256, 160)], fill=(185, 140, 30))
    return _done(img)


DRAWINGS = {  # key (the image file name) -> the function that draws it
    "crest_hoops": draw_crest_hoops,
    "district_map": draw_district_map,
    "ferry": draw_ferry,
    "coffee_swatch": draw_coffee_swatch,
    "cafe_sign": draw_cafe_sign,
    "lyre_sun": draw_lyre_sun,
    "butterfly": draw_butterfly,
    "cinema": draw_cinema,
    "planet_mercury": draw_planet_mercury,
    "element_hg": draw_element_hg,
    "winged_helmet": draw_winged_helmet,
    "orange_van": draw_orange_van,
    "jaguar_rosettes": draw_jaguar_rosettes,
    "green_car": draw_green_car,
    "jet": draw_jet,
    "falcon_bird": draw_falcon_bird,
    "crest_purple": draw_crest_purple,
    "phone": draw_phone,
    "lollipop": draw_lollipop,
    "ferris_wheel": draw_ferris_wheel,
    "storm_eye": draw_storm_eye,
    "mint_leaves": draw_mint_leaves,
    "mint_sweets": draw_mint_sweets,
    "guitar": draw_guitar,
    "seaside_rock": draw_seaside_rock,
    "battery": draw_battery,
    "prison_bars": draw_prison_bars,
    "weaving_shuttle": draw_weaving_shuttle,
    "shuttle_bus": draw_shuttle_bus,
    "wool_hat": draw_wool_hat,
    "cheer_pompoms": draw_cheer_pompoms,
    "lantern": draw_lantern,
    "pagoda_coin": draw_pagoda_coin,
}
