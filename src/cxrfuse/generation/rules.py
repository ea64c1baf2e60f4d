"""Phrase tables of the rule-based CheXpert labeler (:mod:`cxrfuse.generation.labeler`).

Spelling follows :mod:`cxrfuse.text.terms`: every entry is a regular expression matched
case-insensitively as a whole word, a single space matches one or more spaces or hyphens and
``" ?"`` zero or more. The finding families, the negation cues and the copulas (``LINK``) of
that module are reused; what CheXpert needs beyond them is written here:

- per observation, **mentions** (their polarity comes from the context: negation and
  uncertainty cues), **hedged** mentions (uncertain when asserted, e.g. ``vascular
  congestion`` for Edema, as CheXpert's post-negation uncertainty rules make them),
  **negative statements** (0 by themselves: ``costophrenic angles are sharp``) and
  **exclusions** (text that contains a mention but is not one: ``pericardial effusion``);
- the heart and mediastinum statements (``heart size is normal``, ``the cardiomediastinal
  silhouette is enlarged``, ``stable cardiac silhouette``), whose state word decides the value;
- the cue lists: uncertainty that overrides negation (``cannot exclude``, ``no new``, as
  CheXpert's pre-negation rules), negation (:data:`cxrfuse.text.terms.NEGATION_CUES` plus
  ``clear of``, ``removal of``, ...), uncertainty, the cues that follow a mention (``is not
  seen``, ``has resolved``, ``cannot be excluded``) and the words that end a cue's scope;
- the other abnormal findings that make *No Finding* false although they are none of the 14
  (emphysema, granulomas, degenerative change, hernia, ...: CheXpert's ``no_finding`` list),
  taken from :data:`cxrfuse.text.terms.FAMILIES`.

The phrase choices follow the CheXpert labeler's (Irvin et al. 2019) mention lists with
these deliberate differences: a bare ``heart`` or ``contour`` is not a mention (only a
stated size is), ``fibrosis`` is an other finding rather than Pleural Other, and surgical
wires and clips count as Support Devices.
"""

from __future__ import annotations

from dataclasses import dataclass

from cxrfuse.text.terms import CLEAR_LUNGS, FAMILIES, HEART, LINK, NEGATION_CUES


@dataclass(frozen=True)
class Observation:
    """The phrases of one CheXpert observation."""

    name: str
    mention: tuple[str, ...] = ()
    hedged: tuple[str, ...] = ()
    negative: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()


# ------------------------------------------------------------------- heart and mediastinum
MEDIASTINUM = (
    r"(?:cardio ?mediastin(?:um|al)(?: (?:silhouettes?|contours?|shadow|size|width|structures|"
    r"borders?|configuration))?|cardio ?pericardial silhouette|(?:superior )?mediastin(?:um|al "
    r"(?:silhouettes?|contours?|shadow|size|width|structures|borders?|configuration))"
    r"(?: (?:size|width|contours?))?)"
)
"""Subjects that state the mediastinum's size (Enlarged Cardiomediastinum)."""

SUBJECT = (
    rf"(?:the )?(?:{MEDIASTINUM}|{HEART})(?:(?:,? and|,) (?:the )?(?:{MEDIASTINUM}|{HEART}|"
    r"pulmonary(?: (?:vascularity|vasculature))?|hil(?:a|um|ar (?:contours?|structures))|lungs?|"
    r"aorta|great vessels)){0,3}"
)
"""A heart and/or mediastinum subject, possibly joined with other structures."""

STATE_NORMAL = (
    r"within normal limits(?: (?:for|in) (?:size(?: and (?:contour|configuration|shape))?|"
    r"appearance|contour))?|(?:at |within )?(?:the )?(?:upper|high) (?:limits? )?(?:of )?normal"
    r"(?: (?:size|limits|in size))?|normal in (?:size|appearance|contour)(?: and (?:contour|"
    r"configuration|shape|appearance))?|(?:of )?normal (?:size|limits|range|contour)|"
    r"within normal range|top ?normal(?: in size)?|normal(?: sized?)?|unremarkable"
)
STATE_ENLARGED = (
    r"enlarged|enlarging|enlargement|increased in size|increased|large|larger|widened|wide|"
    r"dilated"
)
STATE_BORDERLINE = r"borderline(?: (?:enlarged|in size|large))?|prominent|mildly prominent"
STATE_STABLE = r"stable|unchanged|similar|not changed|grossly unchanged"

STATEMENT = (
    rf"(?P<subject>{SUBJECT}) (?P<link>{LINK})(?P<state>(?P<normal>{STATE_NORMAL})|"
    rf"(?P<enlarged>{STATE_ENLARGED})|(?P<borderline>{STATE_BORDERLINE})|"
    rf"(?P<stable>{STATE_STABLE}))"
)
"""``<subject> <copulas and adverbs> <state>``: ``heart size is mildly enlarged``."""

PRE_STATEMENT = (
    rf"(?:(?P<normal>normal(?: sized?)?|unremarkable|top ?normal)|(?P<stable>stable|unchanged))"
    rf" (?P<subject>{SUBJECT})"
)
"""``<state> <subject>``: ``normal heart size``, ``stable cardiomediastinal silhouette``
(enlarged forms are mentions, so that a negation can reach them)."""

LINK_NEGATION = r"\bnot\b"
LINK_HEDGE = r"\b(?:may|might|possibly|probably)\b"

# ------------------------------------------------------------------- the 14 observations
_DEVICE_LINE = (
    r"(?:picc|pic|central|central venous|venous|arterial|dialysis|(?:internal )?jugular|ij|"
    r"subclavian|swan ?ganz|pulmonary artery|midline|hickman|port|iv|catheter|vascular|"
    r"femoral) (?:catheters?|lines?)"
)

OBSERVATIONS: tuple[Observation, ...] = (
    Observation(
        "Enlarged Cardiomediastinum",
        mention=(
            (r"(?:enlarged|enlarging|widened|wide|prominent) (?:upper |superior )?(?:cardio ?)?"
            r"mediastin(?:um|al (?:silhouettes?|contours?|shadow|width))"),
            r"(?:cardio ?)?mediastinal (?:widening|enlargement|prominence)",
            (r"(?:widening|enlargement|prominence) of the (?:upper |superior )?(?:cardio ?)?"
            r"mediastin(?:um|al (?:silhouette|contours?))"),
        ),
    ),
    Observation(
        "Cardiomegaly",
        mention=(
            r"cardiomegal(?:y|ic)",
            r"(?:cardiac|heart) enlargement",
            r"enlargement of the (?:heart|cardiac (?:silhouette|shadow|size))",
            (r"(?:enlarged|enlarging|large|increased) (?:heart(?: size| shadow| silhouette)?|"
            r"cardiac (?:silhouette|shadow|size|contours?))"),
        ),
        hedged=(
            r"borderline (?:enlarged )?(?:heart(?: size)?|cardiac (?:silhouette|size|enlargement))",
            r"prominent (?:heart|cardiac (?:silhouette|shadow))",
        ),
    ),
    Observation(
        "Lung Opacity",
        mention=(
            r"opacit(?:y|ies)|opacifi(?:cation|cations|ed)",
            r"infiltrat(?:e|es|ion|ions|ive)",
            r"densit(?:y|ies)|increased density",
            r"haziness|hazy (?:opacit(?:y|ies)|densit(?:y|ies)|lungs?)",
            r"air ?space (?:disease|process|filling)",
            r"ground ?glass",
            (r"(?:interstitial|reticular|reticulonodular) (?:markings?|patterns?|opacit(?:y|ies)|"
            r"prominence|changes?)|reticulation"),
            r"(?:parenchymal |pulmonary |lung )?scar(?:s|ring)?",
        ),
        negative=tuple(CLEAR_LUNGS),
        exclude=(
            (r"(?:soft tissue|breast|bone|bony|osseous|calcified|calcific|sclerotic|metallic|"
            r"nodular) densit(?:y|ies)"),
            r"pleural (?:and parenchymal |parenchymal |based )?scar(?:s|ring)?",
            r"pleuro ?parenchymal scar(?:s|ring)?",
        ),
    ),
    Observation(
        "Lung Lesion",
        mention=(
            r"(?:micro ?)?nodul(?:e|es)",
            r"nodular (?:densit(?:y|ies)|opacit(?:y|ies)|opacification)",
            r"mass(?:es)?|lump",
            r"(?:cavitary |pulmonary |lung |parenchymal )?lesions?",
            r"tumou?rs?|neoplasms?|carcinoma|malignan(?:cy|t (?:mass|lesion|nodule))",
        ),
        exclude=(
            (r"(?:lytic|sclerotic|blastic|bone|bony|osseous|skin|cutaneous|breast|vertebral) "
            r"lesions?"),
            r"soft tissue mass(?:es)?",
            r"nipple (?:shadows?|markers?)",
        ),
    ),
    Observation(
        "Edema",
        mention=(
            r"(?:(?:interstitial|alveolar|pulmonary|perihilar) )*o?edema",
            r"chf|(?:congestive )?heart failure|fluid overload",
        ),
        hedged=(
            r"(?:pulmonary |vascular |venous |pulmonary vascular )congestion",
            r"(?:vascular |pulmonary vascular )?indistinctness",
            r"(?:pulmonary )?vascular (?:prominence|engorgement|redistribution)",
            r"cephalization",
            r"kerley(?: b)? lines",
        ),
        exclude=(r"(?:soft tissue|subcutaneous) o?edema",),
    ),
    Observation("Consolidation", mention=(r"consolidat(?:ion|ions|ive|ed|ing)",)),
    Observation(
        "Pneumonia",
        mention=(
            r"(?:broncho ?)?pneumonias?",
            r"infections?|infectious(?: process| etiology)?",
        ),
        exclude=(r"granulomatous (?:infections?|disease|process)",),
    ),
    Observation(
        "Atelectasis",
        mention=(
            r"atelecta(?:sis|ses|tic(?: changes?)?)",
            r"(?:lobar |lung |lobe )?collapsed?",
        ),
        exclude=(
            r"(?:vertebral|vertebra|vertebral body) collapse|collapse of (?:the )?(?:\w+ )?vertebra\w*",
        ),
    ),
    Observation(
        "Pneumothorax",
        mention=(r"(?:hydro ?|hemo ?)?pneumothora(?:x|ces)|ptx",),
    ),
    Observation(
        "Pleural Effusion",
        mention=(
            r"effusions?",
            r"(?:pleural|fissural|subpulmonic) fluid",
            r"hydro ?thorax|hemo ?thorax",
            (r"fluid (?:in|within|tracking into|layering in) (?:the )?(?:pleural spaces?|fissures?|"
            r"minor fissure|major fissure)"),
        ),
        hedged=(
            rf"(?:costophrenic|cp) (?:angles? |sulc[iu]s |recess(?:es)? )?{LINK}blunt(?:ing|ed)",
            (r"blunt(?:ing|ed) (?:of )?(?:the )?(?:(?:left|right|bilateral|lateral|posterior|both) )*"
            r"(?:costophrenic|cp)(?: (?:angles?|sulc[iu]s|recess(?:es)?))?"),
        ),
        negative=(
            (rf"(?:costophrenic|cp) (?:angles?|sulc[iu]s|recess(?:es)?) {LINK}(?:sharp|sharply "
            r"defined|clear|preserved|normal|intact|well-defined|well defined)"),
            r"sharp (?:costophrenic|cp) (?:angles?|sulc[iu]s)",
            rf"pleural spaces? {LINK}(?:clear|normal|unremarkable)",
        ),
        exclude=(r"pericardial effusions?|joint effusions?",),
    ),
    Observation(
        "Pleural Other",
        mention=(
            r"pleural (?:thickening|plaques?|scar(?:s|ring)?|calcifications?|reaction)",
            r"pleural (?:and )?parenchymal (?:scar(?:s|ring)?|thickening)",
            r"pleuro ?parenchymal (?:scar(?:s|ring)?|thickening)",
            r"(?:thickening|thickened) (?:of )?(?:the )?pleura(?:l surfaces?)?",
            r"(?:apical |biapical )(?:pleural )?(?:thickening|capping|caps?)",
            r"fibrothorax",
        ),
    ),
    Observation(
        "Fracture",
        mention=(r"fractur(?:e|es|ed)|fx",),
    ),
    Observation(
        "Support Devices",
        mention=(
            _DEVICE_LINE,
            r"lines? (?:tip|terminates|terminating|ends|courses)",
            r"catheters?|tubes?|drains?|stents?|cannula|mediport|port ?a ?cath|picc",
            (r"(?:dual ?chamber |cardiac |transvenous |left |right )*(?:pacemakers?|pacers?|"
            r"defibrillators?|aicd|icd|pacing device)"),
            r"(?:pacemaker|pacer|pacing|aicd|icd|transvenous|cardiac) (?:leads?|wires?|generators?)",
            r"(?:sternotomy|sternal|surgical|cerclage) (?:wires?|sutures?)|surgical staples?",
            (r"hardware|prosthe(?:sis|ses|tic (?:valve|device))|arthroplast(?:y|ies)|screws?|"
            r"(?:fixation|surgical|metallic|orthopedic) plates?|(?:embolization )?coils?"),
            (r"valve (?:replacement|prosthesis)|(?:prosthetic|mechanical|replaced|bioprosthetic) "
            r"(?:\w+ )?valves?"),
            r"(?:monitor|monitoring|ecg|ekg|telemetry|external) (?:\w+ )?(?:leads?|wires?)",
            r"tip (?:\w+ ){0,6}?(?:svc|superior vena cava|cavoatrial|atri(?:um|al)|brachiocephalic)",
            r"clips?|stimulators?|occluders?|anchors?",
            r"(?:monitoring |support |medical |implanted |cardiac )?devices?",
            (r"tracheostomy|endotracheal|nasogastric|orogastric|enteric tube|feeding tube|"
            r"(?:ng|og|et) tube|ett|intra ?aortic balloon pump|iabp"),
        ),
    ),
)
"""The 13 observations read from text; No Finding is derived (see the labeler)."""

OTHER_FINDINGS: tuple[str, ...] = (
    *(
        term
        for family in (
            "calcinosis", "calcified granuloma", "emphysema", "fibrosis", "hernia",
            "degenerative change", "aorta", "low lung volumes", "spine and bone", "diaphragm",
            "markings", "lymphadenopathy", "pulmonary artery",
        )
        for term in FAMILIES[family]
    ),
    r"pericardial effusions?",
    r"pneumo ?mediastinum|pneumo ?peritoneum|free (?:intraperitoneal |subdiaphragmatic )?air",
    r"subcutaneous (?:emphysema|air|gas)",
    r"sarcoid(?:osis)?|tubercul(?:osis|ous)|metasta(?:sis|ses|tic)",
    r"cavit(?:y|ies|ary|ation)|cysts?|cystic|bronchiectasis",
    r"bronchitis|bronchiolitis|bronchospasm|asthma|aspiration",
    r"abnormal(?:ity|ities)?",
)
"""Findings outside the 14 that make No Finding false when positive or uncertain."""

# ------------------------------------------------------------------- cues
CUE_OVERRIDE = (
    r"cannot (?:be )?(?:excluded?|ruled out|rule out)|can ?not (?:be )?(?:excluded?|ruled out|"
    r"rule out)|can ?'?t (?:be )?(?:excluded?|ruled out|rule out)|could not (?:be )?(?:excluded?|"
    r"ruled out|rule out)|not (?:be )?(?:entirely |completely |definitely )?(?:excluded|ruled out)|"
    r"difficult to (?:exclude|rule out)|no new|without new|no (?:definite )?new"
)
"""Uncertainty that wins over negation (CheXpert's pre-negation uncertainty rules)."""

CUE_NEUTRAL = r"to suggest|to indicate|to explain|suggestive of acute"

CUE_ADJECTIVE = r"(?:suspicious|concerning|worrisome|questionable)(?! (?:for|of)\b)"
"""Uncertainty adjectives that a negation before them reaches through (``no focal
consolidation, suspicious pulmonary opacity, or effusion``); uncertain otherwise."""
"""Words that look like uncertainty but sit inside a negation (``no findings to suggest``)."""

CUE_NEGATION = (
    *NEGATION_CUES,
    "clear of", "removal of", "interval removal of", "rather than", "nor", "never", "none",
    "no longer", "rule out", "ruled out", "exclude", "excluded", "negative", "absent",
    "resolved", "interval resolution of", "no suspicious", "no concerning", "no worrisome",
    "history of",
)
CUE_UNCERTAIN = (
    r"possible|possibly|probable|probably|presumed|presumably|questionable|question of|"
    r"questioned|suspect|suspected|suspects|suspicious|suspicion|concerning|concern|concerns|"
    r"worrisome|may|might|could|would|can be|differential(?: diagnosis)?|suggestion of|"
    r"suggestive of|suggests?|suggesting|favou?rs?|favou?red|consider|considered|versus|vs|"
    r"less likely|borderline|equivocal|indeterminate|obscur(?:ed|es|ing)|"
    r"not (?:well|clearly) (?:seen|visualized|evaluated|assessed)|poorly (?:seen|visualized|"
    r"evaluated|assessed)|cannot be (?:assessed|evaluated)|correlat\w* (?:clinically )?(?:for|with)|"
    r"clinical correlation for|(?:to )?evaluate for|followup to resolution"
)

POST_NEGATION = (
    r"(?:not|no longer) (?:\w+ly )?(?:seen|identified|present|visualized|visible|appreciated|"
    r"demonstrated|evident|noted|detected|apparent|enlarged|elevated|widened|dilated|"
    r"definitely seen)|(?:resolved|cleared|removed|absent|excluded|ruled out)\b|"
    r"(?:has|have) (?:been )?(?:resolved|cleared|removed)|(?:within )?(?:normal limits|limits of "
    r"normal)|normal|unremarkable"
)
"""Cues after a mention: ``pneumothorax is not seen``, ``the effusion has resolved``."""

POST_UNCERTAIN = (
    r"(?:possible|possibly|suspected|questionable|questioned|versus|vs|obscured|not excluded)\b|"
    r"not (?:well|clearly|definitely) (?:seen|visualized|identified|evaluated)|poorly "
    r"(?:seen|visualized|evaluated)|(?:may|might|could) be present|(?:is |would be )?(?:a |another )?"
    r"consideration|(?:is|would be|could be) considered"
)

POST_GAP = (
    r"(?:[\s,]|\b(?:is|are|was|were|has|have|had|been|be|appears?|remains?|seems?|also|again|now|still|currently|"
    r"definitely|clearly|otherwise|essentially|largely|completely|nearly|entirely|and|or|"
    r"nor)\b)*"
)
"""What may stand between a mention and a following cue (other mentions are removed first)."""

OR_GAP = r"\s*,?\s*(?:and/or|or|versus|vs\.?)\s+(?:[a-z-]+\s+){0,3}"
"""Between two mentions that CheXpert reads as uncertain alternatives (``atelectasis or
pneumonia``)."""

TERMINATORS = (
    r"but|however|although|though|whereas|except|aside from|apart from|"
    r"there (?:is|are|was|were|has been|have been)|which (?:is|are|was|were|has|have)"
)
"""Words that end the scope of a cue inside a sentence."""

CHF = r"chf|(?:congestive )?heart failure"
"""Edema mentions that also make Cardiomegaly uncertain when asserted (as CheXpert)."""

SCOPE_WORDS = 10
"""How many words a cue before a mention reaches."""
