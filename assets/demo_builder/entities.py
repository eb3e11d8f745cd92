"""The demo KB's content: its entities (`ENTITIES`, 14 groups that share a name) and example
mentions (`EXAMPLES`), written for this project."""

from __future__ import annotations

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
    _e(
        "D001",
        "Chelsea",
        ["Chelsea the cat"],
        "A tabby cat called Chelsea whose portrait is a well-known sample photograph in image-processing "
        "libraries. She has striped brown and grey fur.",
        P("chelsea"),
    ),
    _e(
        "D002",
        "Chelsea",
        ["Chelsea Athletic"],
        "Chelsea Athletic, a fictional amateur football club from the demo town of Northbridge. The club "
        "plays in red and white hoops and has a shield for a crest.",
        D("crest_hoops"),
    ),
    _e(
        "D003",
        "Chelsea",
        ["Chelsea, London"],
        "A district of west London on the north bank of the River Thames, known for its terraced streets "
        "and garden squares.",
        D("district_map"),
    ),
    _e(
        "D004",
        "Chelsea",
        ["Chelsea (ferry)"],
        "Chelsea, a fictional passenger ferry with a yellow hull that crosses Northbridge harbour several times a day.",
        D("ferry"),
    ),
    # --- Coffee --------------------------------------------------------------------------------
    _e(
        "D005",
        "Coffee",
        ["coffee (drink)"],
        "A hot drink brewed from roasted and ground coffee beans, often served as espresso or with milk "
        "in a cup and saucer.",
        P("coffee"),
    ),
    _e(
        "D006",
        "Coffee",
        ["Coffee (racehorse)"],
        "Coffee, a fictional racehorse from the Northbridge stories, known for strong finishes over long distances.",
        P("horse"),
    ),
    _e(
        "D007",
        "Coffee",
        ["coffee (colour)", "coffee brown"],
        "A dark brown colour named after roasted coffee, used for paints, fabrics and furniture finishes.",
        D("coffee_swatch"),
    ),
    _e(
        "D008",
        "Coffee",
        ["Coffee (café)"],
        "Coffee, a fictional café on the Northbridge market square. Its teal sign shows a white steaming cup.",
        D("cafe_sign"),
    ),
    # --- Apollo --------------------------------------------------------------------------------
    _e(
        "D009",
        "Apollo",
        ["Apollo program", "Project Apollo"],
        "The NASA human spaceflight programme that landed astronauts on the Moon between 1969 and 1972.",
        P("moon"),
    ),
    _e(
        "D010",
        "Apollo",
        ["Apollo (god)", "Phoebus"],
        "A god of ancient Greek and Roman religion associated with music, poetry, prophecy, archery and "
        "the light of the sun.",
        D("lyre_sun"),
    ),
    _e(
        "D011",
        "Apollo",
        ["Apollo butterfly", "Parnassius apollo"],
        "A large white butterfly of mountain meadows in Europe and Asia, with black spots on the "
        "forewings and red eye-spots on the hindwings.",
        D("butterfly"),
    ),
    _e(
        "D012",
        "Apollo",
        ["Apollo Cinema"],
        "Apollo, a fictional single-screen cinema on the Northbridge high street with a red facade and a gold marquee.",
        D("cinema"),
    ),
    # --- Mercury -------------------------------------------------------------------------------
    _e(
        "D013",
        "Mercury",
        ["Mercury (planet)"],
        "The smallest planet of the Solar System and the closest to the Sun. Its grey surface is heavily cratered.",
        D("planet_mercury"),
    ),
    _e(
        "D014",
        "Mercury",
        ["mercury (element)", "Hg", "quicksilver"],
        "A chemical element with symbol Hg and atomic number 80: a silvery metal that is liquid at room temperature.",
        D("element_hg"),
    ),
    _e(
        "D015",
        "Mercury",
        ["Mercury (god)"],
        "The Roman god of messages, trade and travellers, usually shown with a winged hat and winged sandals.",
        D("winged_helmet"),
    ),
    _e(
        "D016",
        "Mercury",
        ["Mercury Couriers"],
        "Mercury, a fictional courier company in Northbridge whose delivery vans are painted bright orange.",
        D("orange_van"),
    ),
    # --- Jaguar --------------------------------------------------------------------------------
    _e(
        "D017",
        "Jaguar",
        ["jaguar (animal)", "Panthera onca"],
        "A large wild cat of Central and South America with a golden coat covered in black rosettes.",
        D("jaguar_rosettes"),
    ),
    _e(
        "D018",
        "Jaguar",
        ["Jaguar (sports car)"],
        "Jaguar, a fictional two-door sports car model from the Northbridge stories, usually sold in dark green.",
        D("green_car"),
    ),
    _e(
        "D019",
        "Jaguar",
        ["SEPECAT Jaguar"],
        "A twin-engine jet attack aircraft developed jointly by Britain and France in the 1960s.",
        D("jet"),
    ),
    # --- Falcon --------------------------------------------------------------------------------
    _e(
        "D020",
        "Falcon",
        ["Falcon 9"],
        "A two-stage orbital launch rocket built by SpaceX whose first stage is designed to land and be reused.",
        P("rocket"),
    ),
    _e(
        "D021",
        "Falcon",
        ["falcon (bird)"],
        "A fast bird of prey with long pointed wings that often catches other birds in flight.",
        D("falcon_bird"),
    ),
    _e(
        "D022",
        "Falcon",
        ["Falcon Rovers"],
        "Falcon Rovers, a fictional amateur football club in the Northbridge league that plays in purple.",
        D("crest_purple"),
    ),
    _e(
        "D023",
        "Falcon",
        ["Falcon (motorcycle)"],
        "Falcon, the nickname of a fictional red cruiser motorcycle kept in a workshop garage in the "
        "Northbridge stories.",
        P("motorcycle"),
    ),
    # --- Galaxy --------------------------------------------------------------------------------
    _e(
        "D024",
        "Galaxy",
        ["galaxy (astronomy)"],
        "A huge system of stars, gas and dust held together by gravity. Deep telescope images show "
        "thousands of them as small smudges of light.",
        P("hubble"),
    ),
    _e(
        "D025",
        "Galaxy",
        ["Galaxy (phone)"],
        "Galaxy, a fictional smartphone model from the Northbridge stories with a black glass front and a "
        "silver frame.",
        D("phone"),
    ),
    _e(
        "D026",
        "Galaxy",
        ["Galaxy (lollipop)"],
        "Galaxy, a fictional brand of swirl lollipop with pink, yellow and white spirals.",
        D("lollipop"),
    ),
    # --- Eye -----------------------------------------------------------------------------------
    _e(
        "D027",
        "Eye",
        ["eye (organ)"],
        "The organ of sight. A photograph of the back of the eye shows the retina, the optic disc and "
        "the blood vessels.",
        P("retina"),
    ),
    _e(
        "D028",
        "Eye",
        ["Northbridge Eye"],
        "Eye, a fictional observation wheel on the Northbridge waterfront with white passenger capsules.",
        D("ferris_wheel"),
    ),
    _e(
        "D029",
        "Eye",
        ["eye of the storm"],
        "The calm, nearly cloudless centre of a tropical cyclone, surrounded by a ring of thunderstorms.",
        D("storm_eye"),
    ),
    _e(
        "D030",
        "Eye",
        ["Eye Photo Club"],
        "Eye, a fictional amateur photography club from Northbridge whose members shoot outdoors with "
        "tripod-mounted cameras.",
        P("camera"),
    ),
    # --- Mint ----------------------------------------------------------------------------------
    _e(
        "D031",
        "Mint",
        ["mint (herb)", "Mentha"],
        "An aromatic herb with serrated green leaves, used fresh in teas, sauces and desserts.",
        D("mint_leaves"),
    ),
    _e(
        "D032",
        "Mint",
        ["mint (coin factory)"],
        "A facility that strikes coins from metal blanks, for circulation or for collectors.",
        P("coins"),
    ),
    _e(
        "D033",
        "Mint",
        ["Mint (sweets)"],
        "Mint, a fictional brand of round white peppermint sweets sold in a blue tin with a red rim.",
        D("mint_sweets"),
    ),
    # --- Rock ----------------------------------------------------------------------------------
    _e(
        "D034",
        "Rock",
        ["rock (geology)", "stone"],
        "Naturally occurring solid mineral matter. Broken into small pieces it forms gravel.",
        P("gravel"),
    ),
    _e(
        "D035",
        "Rock",
        ["rock music"],
        "A genre of popular music built around electric guitars, bass guitar and drums.",
        D("guitar"),
    ),
    _e(
        "D036",
        "Rock",
        ["seaside rock", "stick of rock"],
        "A hard stick-shaped sweet sold at seaside resorts, pink on the outside with letters running through it.",
        D("seaside_rock"),
    ),
    # --- Cell ----------------------------------------------------------------------------------
    _e(
        "D037",
        "Cell",
        ["cell (biology)"],
        "The basic structural unit of living organisms, enclosed by a membrane. Under a microscope cells "
        "are seen alone or packed together in tissues.",
        P("cell"),
        P("ihc"),
    ),
    _e(
        "D038",
        "Cell",
        ["electrochemical cell", "battery cell"],
        "An electrochemical cell that stores energy and delivers it as electric current, such as an AA battery.",
        D("battery"),
    ),
    _e(
        "D039",
        "Cell",
        ["prison cell"],
        "A small room in a prison in which an inmate is held, closed by a barred door.",
        D("prison_bars"),
    ),
    # --- Shuttle -------------------------------------------------------------------------------
    _e(
        "D040",
        "Shuttle",
        ["Space Shuttle"],
        "NASA's partly reusable crewed spacecraft, flown from 1981 to 2011, which launched like a rocket "
        "and landed like a glider.",
        P("astronaut"),
    ),
    _e(
        "D041",
        "Shuttle",
        ["shuttle (weaving)"],
        "A boat-shaped tool that carries the weft thread back and forth between the warp threads on a loom.",
        D("weaving_shuttle"),
    ),
    _e(
        "D042",
        "Shuttle",
        ["shuttle bus"],
        "A bus that runs back and forth over a short fixed route, for example between an airport "
        "terminal and a car park.",
        D("shuttle_bus"),
    ),
    # --- Pompom --------------------------------------------------------------------------------
    _e(
        "D043",
        "Pompom",
        ["pompon dahlia", "pompon"],
        "A dahlia with small, very round flower heads made of tightly curled petals.",
        P("flower"),
    ),
    _e(
        "D044",
        "Pompom",
        ["pompom (hat)", "bobble"],
        "A small ball of wool or yarn sewn on top of a knitted hat as decoration.",
        D("wool_hat"),
    ),
    _e(
        "D045",
        "Pompom",
        ["cheerleading pompom", "pom-pom"],
        "A bundle of shiny plastic strands that cheerleaders shake and wave.",
        D("cheer_pompoms"),
    ),
    # --- Pagoda --------------------------------------------------------------------------------
    _e(
        "D046",
        "Pagoda",
        ["pagoda (building)"],
        "A tiered tower with several projecting eaves, common in East Asian temple and palace architecture.",
        P("china"),
    ),
    _e(
        "D047",
        "Pagoda",
        ["Pagoda (restaurant)"],
        "Pagoda, a fictional restaurant in Northbridge whose sign is a red paper lantern.",
        D("lantern"),
    ),
    _e("D048", "Pagoda", ["pagoda (coin)"], "A small gold coin formerly struck in southern India.", D("pagoda_coin")),
]


# ------------------------------------------------------------------------------------------------
# Example mentions: (sentence, mention, answer, query image spec or None)
# A query spec is (image index in the entity's list, [operations]); operations:
#   ("crop", l, t, r, b) fractions · ("flip",) · ("rot", degrees) · ("jitter", brightness, contrast, colour)
# ------------------------------------------------------------------------------------------------

EXAMPLES: list[tuple[str, str, str, tuple | None]] = [
    (
        "Chelsea fell asleep on the windowsill again.",
        "Chelsea",
        "D001",
        (0, [("crop", 0.15, 0.0, 0.85, 0.9), ("flip",)]),
    ),
    (
        "We finally made it to Chelsea on Saturday.",
        "Chelsea",
        "D003",
        (0, [("crop", 0.1, 0.1, 0.9, 0.95), ("jitter", 1.05, 0.9, 1.1)]),
    ),
    ("Chelsea won 2-1 after a late goal in the second half.", "Chelsea", "D002", None),
    (
        "Here is Chelsea, just as I remembered it.",
        "Chelsea",
        "D004",
        (0, [("rot", 8), ("crop", 0.05, 0.1, 0.95, 0.95)]),
    ),
    (
        "A coffee before the meeting, as always.",
        "coffee",
        "D005",
        (0, [("crop", 0.2, 0.05, 0.8, 0.85), ("jitter", 1.1, 1.1, 0.9)]),
    ),
    ("Coffee was the favourite in the third race.", "Coffee", "D006", None),
    ("I would call this shade coffee rather than chocolate.", "coffee", "D007", (0, [("crop", 0.05, 0.0, 0.95, 0.7)])),
    ("Meet me at Coffee at noon.", "Coffee", "D008", (0, [("rot", -6), ("jitter", 0.9, 1.0, 1.2)])),
    ("Apollo, as seen in this picture.", "Apollo", "D009", (0, [("crop", 0.1, 0.1, 0.8, 0.8), ("rot", 90)])),
    ("A statue of Apollo holding a lyre stood in the temple.", "Apollo", "D010", None),
    (
        "We spotted an Apollo in the alpine meadow.",
        "Apollo",
        "D011",
        (0, [("crop", 0.05, 0.1, 0.95, 0.9), ("rot", -10)]),
    ),
    (
        "The queue outside the Apollo went round the block.",
        "Apollo",
        "D012",
        (0, [("jitter", 1.2, 1.1, 0.9), ("crop", 0.0, 0.2, 1.0, 1.0)]),
    ),
    ("Mercury is hard to spot.", "Mercury", "D013", (0, [("crop", 0.1, 0.1, 0.9, 0.9), ("rot", 35)])),
    ("Old thermometers were filled with mercury.", "mercury", "D014", None),
    (
        "A small bronze of Mercury was found in the villa.",
        "Mercury",
        "D015",
        (0, [("flip",), ("crop", 0.1, 0.1, 0.9, 0.85)]),
    ),
    ("Mercury showed up just after lunch.", "Mercury", "D016", (0, [("crop", 0.0, 0.25, 1.0, 0.95)])),
    (
        "A jaguar crossed the road in front of us.",
        "jaguar",
        "D017",
        (0, [("crop", 0.2, 0.2, 0.8, 0.8), ("jitter", 0.9, 1.1, 1.1)]),
    ),
    ("The Jaguar was parked outside the hotel.", "Jaguar", "D018", (0, [("flip",), ("rot", 5)])),
    ("Two Jaguar jets flew low over the airfield.", "Jaguar", "D019", None),
    ("The Falcon lifted off at dawn.", "Falcon", "D020", (0, [("crop", 0.25, 0.0, 0.85, 1.0)])),
    ("A falcon circled above the cliffs.", "falcon", "D021", (0, [("flip",), ("crop", 0.05, 0.15, 0.95, 0.85)])),
    ("Falcon clinched promotion on the final day of the season.", "Falcon", "D022", None),
    (
        "The Falcon is back in the garage after its repair.",
        "Falcon",
        "D023",
        (0, [("crop", 0.1, 0.15, 0.95, 0.95), ("jitter", 1.1, 1.0, 1.0)]),
    ),
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
