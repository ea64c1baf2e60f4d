"""Term tables for label masking and the leakage audit.

Every term is a regular expression matched case-insensitively as a whole word (not preceded
or followed by a letter or digit). Two spellings keep the table readable:

- a single space matches one or more spaces or hyphens (``plate like`` matches
  ``plate-like`` and ``plate  like``);
- ``" ?"`` matches zero or more spaces or hyphens (``air ?space`` matches ``airspace``,
  ``air space`` and ``air-space``).

:data:`LABEL_TERMS` maps a lower-case label name to the phrases that state that label,
positive *or negative* (``heart size is normal`` states the cardiomegaly label as surely as
``cardiomegaly`` does). :data:`NORMAL_PHRASES` are the stock sentences that state a whole study
normal. :data:`PROBE_TERMS` are context words that often travel with a finding but do not name
it; they are reported by the audit and never masked.

The tables were checked against the 3,955 OpenI reports: the most frequent sentences of
normal and abnormal IMPRESSION / FINDINGS sections, and the words a logistic regression
still found predictive after masking.
"""

from __future__ import annotations

# ----------------------------------------------------------------------------- prefixes
NEGATION_CUES: list[str] = [
    "no", "not", "without", "negative for", "free of", "absence of", "resolution of",
    "resolved", "no evidence of", "no signs of", "no findings of", "no typical findings of",
    "no radiographic evidence of", "no evidence for",
]
"""Words that negate the finding after them; masked together with it (``no [MASK]`` would
still tell a negative study from a positive one)."""

NEGATION_FILLERS: list[str] = [
    "evidence", "sign", "signs", "definite", "definitive", "visible", "sizable", "significant",
    "obvious", "convincing", "discrete", "suspicious", "gross", "overt", "appreciable",
    "radiographic", "of", "for", "to suggest", "suggestive of", "a", "an", "any", "the", "other",
    "additional", "further", "typical", "findings of", "identifiable", "measurable",
]
"""Words allowed between a negation cue and the finding (``no definite``, ``no evidence of a``)."""

MODIFIERS: list[str] = [
    # degree and certainty
    "mild", "mildly", "moderate", "moderately", "marked", "markedly", "slight", "slightly",
    "severe", "severely", "minimal", "minimally", "massive", "massively", "borderline",
    "stable", "stably", "significant", "significantly", "grossly", "somewhat", "very", "again",
    "now", "still", "probably", "possibly", "likely", "questionably", "questionable",
    "possible", "probable", "suspected", "presumed", "persistent", "persistently", "chronic",
    "chronically", "subtle", "faint", "prominent",
    # size and number
    "small", "smaller", "large", "larger", "trace", "tiny", "moderate-sized", "moderate sized",
    "small-to-moderate", "small to moderate", "few", "several", "multiple", "numerous",
    "scattered", "a few", "single", "solitary",
    # time course
    "new", "old", "interval", "increasing", "increased", "decreasing", "decreased",
    "worsening", "worsened", "improving", "improved", "residual", "early", "developing",
    "acute", "subacute", "healed", "healing", "recent", "remote", "resolving", "unchanged",
    # place and pattern
    "left", "right", "bilateral", "bilaterally", "bibasilar", "basilar", "bibasal", "basal",
    "apical", "biapical", "upper", "lower", "middle", "lobe", "lobar", "lingular",
    "subsegmental", "segmental", "focal", "multifocal", "diffuse", "patchy", "streaky",
    "linear", "layering", "loculated", "dependent", "posterior", "anterior", "lateral",
    "medial", "retrocardiac", "perihilar", "peripheral", "central", "underlying",
    "superimposed", "displaced", "nondisplaced", "non-displaced", "rib", "vertebral",
    "compression", "lung", "pulmonary", "pleural", "parenchymal", "sided", "recess", "sulcus",
    "posterior recess", "costophrenic recess",
]
"""Words describing a finding that are masked with it when they come right before it
(``small right [MASK]`` would still say the finding is present)."""

LINK = (
    r"(?:(?:is|are|was|were|appears?|remains?|seems?|has|have|had|been|becomes?|be|again|now|"
    r"still|not|may|might|likely|possibly|probably|slightly|mildly|moderately|markedly|"
    r"severely|minimally|borderline|stably|somewhat|significantly|also|otherwise|overall|"
    r"grossly|at|the|in|unchanged|stable|to|or|mild|persistently|somewhat) )*"
)
"""Copulas and adverbs between a subject and its state (``heart size is mildly enlarged``)."""

HEART = (
    r"(?:heart(?: size| shadow| silhouette| contours?)?|cardiac (?:silhouette|shadow|size|"
    r"contours?|diameter|dimensions?|borders?|configuration)|cardio ?mediastinal "
    r"(?:silhouettes?|contours?|shadow|size)|cardio ?pericardial silhouette|cardiac)"
)
HEART_WITH = (
    HEART + r"(?:(?:,? and|,) (?:the )?(?:mediastin(?:um|al)(?: (?:contours?|silhouettes?))?|"
    r"pulmonary(?: (?:vascularity|vasculature))?|hil(?:a|um|ar contours?)|lungs?|aorta|"
    r"great vessels)){0,3}"
)
HEART_STATE = (
    r"(?:within normal limits(?: (?:for|in) (?:size(?: and (?:contour|configuration))?|appearance))?|"
    r"(?:at |within )?(?:the )?(?:upper|high) (?:limits? )?(?:of )?normal(?: (?:size|limits))?|"
    r"normal in size(?: and (?:contour|configuration|shape))?|normal size(?: and contour)?|"
    r"of normal size|normal limits|within normal range|normal range|"
    r"increased in size|borderline (?:enlarged|in size)|top normal|top-normal|upper normal|"
    r"enlarged|enlargement|enlarging|large|larger|prominent|increased|normal|unremarkable|"
    r"borderline|stable|unchanged)"
)
LUNGS = (
    r"(?:(?:both |the )?lungs?(?: fields?| parenchyma| bases)?|lung fields?|pulmonary parenchyma)"
)
CLEAR = r"(?:clear|clean|free|normal(?:ly)? (?:expanded|aerated|inflated))"
CLEAR_LUNGS = [
    rf"{LUNGS} {LINK}{CLEAR}(?: bilaterally| and (?:well-)?expanded| of (?:focal |acute )?(?:disease|infiltrates?|opacit(?:y|ies)|consolidation))?",
    r"(?:(?:well|hyper|normally) ?expanded (?:and|but) )?clear lungs?",
    r"(?:lungs? |lung fields? )?(?:clear|free) (?:bilaterally|of (?:focal |acute )?(?:disease|infiltrates?|opacit(?:y|ies)|consolidation))",
]
"""Statements that the lung fields hold no opacity (negative for every parenchymal label)."""

# ----------------------------------------------------------------------------- families
_CARDIOMEGALY = [
    r"cardiomegal(?:y|ic)",
    rf"(?:enlarged|enlarging|large|prominent|increased|normal|borderline|upper normal|top normal) {HEART}",
    rf"{HEART_WITH} {LINK}{HEART_STATE}",
    r"(?:cardiac|heart) enlargement",
    r"(?:enlarged|enlargement of the|prominen(?:t|ce of the)) (?:(?:left|right) )?(?:atri(?:um|al)|ventric(?:le|ular)|heart)",
    r"(?:(?:left|right|bi) ?)?(?:atrial|ventricular) (?:enlargement|prominence|hypertrophy)|cardiomyopathy",
    rf"enlargement of the {HEART}",
    r"cardiothoracic ratio",
]
_ATELECTASIS = [
    (r"(?:(?:sub ?segmental|segmental|lobar|discoid|dis[ck] ?like|plate ?like|band ?like|linear|"
    r"bibasilar|basilar|bibasal|basal|streaky|patchy|compressive|passive|rounded?|"
    r"dependent) )*atelecta(?:sis|ses|tic(?: changes?)?|ctasis)"),
    r"(?:plate|band|dis[ck]) ?like|discoid",
    r"(?:lobar |lung |lobe )?collapsed?",
]
_EFFUSION = [
    r"(?:pleural )?effusions?",
    r"(?:pleural|fissural|subpulmonic|loculated) fluid|pleural fusion",
    r"blunting of the (?:(?:left|right|both) )?pleural spaces?",
    r"fluid (?:in|within|tracking|layering) (?:the |along the |into the )?(?:pleural|fissures?|minor fissure|major fissure)",
    r"hydro ?thorax|hemo ?thorax|hydro ?pneumothorax|fibrothorax",
    rf"(?:costophrenic|cp) (?:angles? |sulc[iu]s |recess(?:es)? )?{LINK}blunt(?:ing|ed)",
    (r"blunt(?:ing|ed) (?:of )?(?:the )?(?:(?:left|right|bilateral|lateral|posterior|both) )*"
    r"(?:costophrenic|cp) (?:angles?|sulc[iu]s|recess(?:es)?)"),
    (r"blunt(?:ing|ed) (?:of )?(?:the )?(?:(?:left|right|bilateral|lateral|posterior|both) )*"
    r"(?:costophrenic|cp)"),
    rf"(?:costophrenic|cp) (?:angles?|sulc[iu]s|recess(?:es)?) {LINK}(?:blunted|sharp|sharply defined|clear|preserved|normal|intact|well-defined|well defined)",
    r"sharp (?:costophrenic|cp) (?:angles?|sulc[iu]s)",
    rf"pleural spaces? {LINK}(?:clear|normal|unremarkable)",
    r"meniscus|menisc(?:al|oid)",
]
_CALC_SITE = (
    r"(?:(?:(?:of|in|within|over|along) (?:the )?)?(?:(?:left|right|bilateral|hilar|mediastinal|"
    r"paratracheal|subcarinal|infracarinal|aortopulmonary|thoracic|and|,) ?)*(?:lymph(?: nodes?)?|"
    r"nodes?|hila|hilum|aort(?:a|ic)(?: (?:knob|arch))?|costal cartilages?|coronary arter(?:y|ies)))"
)
_CALCINOSIS = [
    r"calcinosis",
    rf"(?:atherosclerotic |vascular |aortic |dense |coarse |punctate |nodal )?calcifi(?:ed|cations?|c)(?: {_CALC_SITE})?",
    r"non ?calcified",
    r"calcium",
]
_GRANULOMA = [
    r"(?:calcified |noncalcified |non-calcified |old |healed |scattered |multiple )*granulom(?:as?|ata|atous)(?: disease| changes?| process)?",
    r"calcified (?:nodules?|nodular densit(?:y|ies)|densit(?:y|ies)|foci|focus|(?:hilar |lymph |mediastinal )?(?:lymph )?nodes?)",
    r"histoplasm(?:osis|a)",
]
_OPACITY = [
    (r"(?:(?:patchy|streaky|hazy|ill-defined|ill defined|focal|linear|nodular|reticular|"
    r"interstitial|airspace|air space|alveolar|confluent|retrocardiac|basilar|bibasilar|"
    r"perihilar|increased|diffuse|bilateral|scattered|faint|subtle|vague) )*"
    r"(?:opacit(?:y|ies)|opacifi(?:cation|ed)|opaque|densit(?:y|ies)|infiltrat(?:es?|ion|ive|ed)|haziness)"),
    r"ground ?glass",
    r"air ?space (?:disease|opacit(?:y|ies)|consolidation|process|filling)",
    r"consolidat(?:ion|ions|ive|ed)",
    *CLEAR_LUNGS,
]
_NODULE = [
    r"(?:(?:pulmonary|lung|calcified|noncalcified|soft tissue|spiculated) )*(?:micro ?|fibro ?|reticulo ?)?nodul(?:es?|ar|arity)",
    r"(?:soft tissue |pulmonary |lung |mediastinal |hilar )?mass(?:es|like)?",
    r"lesions?",
]
_AIRSPACE = [
    r"air ?space (?:disease|opacit(?:y|ies)|consolidation|process|filling|infiltrates?)",
    r"alveolar (?:consolidation|opacit(?:y|ies)|infiltrates?|process|disease|filling)",
    r"consolidat(?:ion|ions|ive|ed)",
    *CLEAR_LUNGS,
]
_PNEUMONIA = [
    r"(?:broncho ?)?pneumonias?|pneumonitis",
    r"(?:infectious|inflammatory) (?:process|etiology|change)|infection|infectious",
    r"aspiration",
]
_PNEUMOTHORAX = [r"(?:hydro|hemo)?pneumothora(?:x|ces)|ptx"]
_EDEMA = [
    r"(?:(?:interstitial|alveolar|pulmonary|perihilar) )*o?edema(?:tous)?",
    r"(?:pulmonary |vascular |venous )*congest(?:ion|ive|ed)",
    r"chf|(?:congestive )?heart failure|fluid overload|cephalization|kerley(?: b)?(?: lines)?",
    r"(?:vascular|venous) (?:redistribution|engorgement|prominence|hypertension)",
    r"peribronchial cuffing",
]
_EMPHYSEMA = [
    r"(?:subcutaneous |bullous |centrilobular |paraseptal )?emphysema(?:tous)?",
    r"copd|chronic obstructive (?:pulmonary|lung|airways?) disease",
    r"hyper ?(?:inflat|expan|aerat|distend|distent)(?:ion|ed|ded|sion|ation)",
    r"hyper ?(?:inflated|expanded|aerated|lucent|lucency)",
    r"over ?(?:inflat|expan)(?:ion|ed|ded|sion)",
    r"bullae|bullous|bleb(?:s)?",
    r"flatten(?:ed|ing) (?:of )?(?:the )?(?:(?:both|left|right) )?(?:hemi ?)?diaphragms?",
    r"(?:hemi ?)?diaphragms? (?:are |is )?flatten(?:ed|ing)",
    r"increased (?:ap|anteroposterior|anterior-posterior) (?:diameter|dimension)",
]
_FIBROSIS = [
    r"fibro(?:sis|ses|tic)|scar(?:s|ring|red)?|cicatri(?:x|ces)",
    r"interstitial (?:lung )?(?:disease|fibrosis|changes?|prominence|pattern|thickening|markings)|ild",
    r"honeycomb(?:ing)?|reticul(?:ar|ation|onodular)",
]
_HERNIA = [r"(?:hiatal |hiatus |diaphragmatic |paraesophageal )?herni(?:as?|ation)"]
_FRACTURE = [
    r"fractur(?:es?|ed)|fx|compression deformit(?:y|ies)",
]
_SUPPORT_DEVICES = [
    r"(?:(?:central|venous|picc|pic|arterial|dialysis|jugular|subclavian|swan ?ganz|pulmonary artery|internal jugular) )+(?:line|catheter)s?",
    r"catheters?|lines?|tubes?|drains?|stents?|ports?|port ?a ?cath|picc",
    r"(?:dual ?chamber |cardiac |transvenous |left |right )*(?:pacemakers?|pacers?|defibrillators?|aicd|icd|pacing device)",
    r"(?:pacemaker |pacer |aicd |transvenous |cardiac )?(?:leads?|wires?|generators?)",
    r"(?:sternotomy |surgical |cervical |vascular )?(?:wires?|clips?|staples?|sutures?)",
    r"hardware|prosthe(?:sis|ses|tic)|implants?|devices?|electrodes?|valve (?:replacement|prosthesis)",
    r"tracheostomy|endotracheal|nasogastric|orogastric|enteric|feeding tube|(?:ng|og|et) tube",
]
_PLEURAL_THICKENING = [
    r"pleural (?:thickening|plaques?|scarring|reaction|calcifications?|based)",
    r"(?:thickening|thickened) (?:of )?(?:the )?pleura(?:l)?",
    r"(?:apical |biapical )(?:pleural )?(?:thickening|capping|caps?)",
    r"pleural-parenchymal",
]
_MEDIASTINUM = [
    r"(?:enlarged|widened|prominent|wide) (?:cardio ?)?mediastin(?:um|al (?:silhouette|contours?))",
    rf"(?:cardio ?)?mediastin(?:um|al (?:silhouette|contours?|width)) {LINK}(?:widened|enlarged|prominent|wide)",
    r"(?:cardio ?)?mediastinal (?:widening|enlargement|prominence)",
    r"widening of the (?:cardio ?)?mediastinum",
]
_LESION = [
    r"lesions?|tumou?rs?|neoplasms?|neoplastic|carcinoma|cancer|malignan(?:cy|t)|metasta(?:sis|ses|tic)",
    r"cavit(?:y|ies|ary|ation)|cysts?|cystic",
]

# IU X-ray MeSH heads beyond the eight default labels: they make a study "abnormal" too.
_DEGENERATIVE = [
    r"degenerative(?: (?:changes?|disease|disc disease|joint disease|spurring))?",
    r"spondylo(?:sis|tic)|osteophyt(?:es?|ic|osis)|spurring|syndesmophytes?",
    r"(?:osteo)?arthri(?:tis|tic)|arthropathy|dish|diffuse idiopathic skeletal hyperostosis",
]
_AORTA = [
    r"tortu(?:ous|osity)|ectatic|ectasia|unfold(?:ed|ing)|elongat(?:ed|ion)|aneurysm(?:al)?",
    r"atheroscleros(?:is|tic)|arterioscleros(?:is|tic)|atheromatous|atherosclerotic",
    r"(?:dilated|dilatation of the|enlarged|prominent) (?:thoracic )?aort(?:a|ic)",
]
_LOW_VOLUMES = [
    r"(?:low|decreased|diminished|reduced|small) (?:lung )?volumes?",
    r"hypo ?(?:inflat|ventilat|expan)(?:ion|ed|ory|sion|ded)",
    r"(?:poor|suboptimal|shallow|limited) (?:inspiratory )?(?:effort|inspiration|inflation)",
    r"(?:bronchovascular |vascular )?crowding(?: of (?:the )?(?:bronchovascular|vascular) (?:markings|structures))?",
    r"volume loss|loss of volume",
]
_SPINE = [
    r"(?:dextro|levo|kypho|roto)?scolio(?:sis|tic)|kypho(?:sis|tic)|lordo(?:sis|tic)",
    r"(?:dextro|levo) ?convex(?: curvature)?|curvature of the (?:thoracic |lumbar )?spine",
    r"deformit(?:y|ies)|wedg(?:e|ed|ing)(?: deformit(?:y|ies))?|height loss|loss of (?:vertebral )?(?:body )?height",
    r"pectus (?:excavatum|carinatum)|funnel chest",
    r"(?:spinal |cervical )?fusion",
    r"osteopeni(?:a|c)|osteoporo(?:sis|tic)|demineraliz(?:ation|ed)",
    r"sclero(?:sis|tic)|bone islands?",
]
_DIAPHRAGM = [
    r"elevat(?:ed|ion) (?:of )?(?:the )?(?:(?:left|right) )?(?:hemi ?)?diaphragms?",
    rf"(?:(?:left|right) )?(?:hemi ?)?diaphragms? {LINK}elevated",
    r"eventration",
]
_MARKINGS = [
    (r"(?:(?:increased|prominent|coarse(?:ned)?|accentuated|interstitial|bronchovascular|"
    r"reticular|lung|pulmonary|vascular) )+markings"),
    r"(?:interstitial|vascular|bronchovascular|hilar) prominence|prominence of the (?:central )?(?:pulmonary )?(?:vasculature|vessels|interstitium|hila)",
    r"bronch(?:ial|iolar) wall thickening|peribronchial thickening|bronchiectasis|bronchitis",
    r"chronic (?:lung|interstitial|obstructive|pulmonary) (?:changes?|disease)",
]
_LYMPH = [
    r"(?:hilar |mediastinal )?(?:lymph ?)?adenopathy|lymph ?adenopathy",
    r"hilar (?:prominence|enlargement|fullness|adenopathy)|(?:enlarged|prominent) (?:hila|hilum|hilar)",
    r"(?:enlarged|prominent) (?:lymph )?nodes",
]
_VASCULAR = [
    r"(?:enlarged|prominent|dilated) (?:central )?pulmonary arter(?:y|ies)",
    r"pulmonary (?:arterial )?hypertension",
]
_SURGERY = [
    r"(?:median )?sternotomy|cabg|(?:coronary )?bypass(?: graft(?:ing)?| surgery)?",
    r"post ?(?:surgical|operative)|status post|s/p|(?:chole|mast|lob|pneumon|segment)ectomy|thoracotomy",
    r"foreign bod(?:y|ies)|nipple (?:shadows?|markers?)|breast implants?",
]
_OTHER_FINDINGS = [
    r"lucen(?:cy|cies|t)",
    r"(?:epicardial|pericardial) fat(?: pad)?",
    r"(?:mediastinal |tracheal )?(?:shift|deviation)",
    r"pneumoperitoneum|free air|sarcoid(?:osis)?|tubercul(?:osis|ous)|tb|cholelithiasis|gallstones?",
    r"dislocat(?:ion|ed)|contrast (?:material|media|agent)|barium",
    r"(?:technically )?(?:limited|suboptimal)(?: (?:study|exam|examination|evaluation|technique|positioning|penetration))?",
    r"(?:under|over) ?penetrat(?:ed|ion)|rotat(?:ed|ion)",
]

FAMILIES: dict[str, list[str]] = {
    "cardiomegaly": _CARDIOMEGALY,
    "atelectasis": _ATELECTASIS,
    "pleural effusion": _EFFUSION,
    "calcinosis": _CALCINOSIS,
    "calcified granuloma": _GRANULOMA,
    "opacity": _OPACITY,
    "nodule": _NODULE,
    "airspace disease": _AIRSPACE,
    "pneumonia": _PNEUMONIA,
    "pneumothorax": _PNEUMOTHORAX,
    "edema": _EDEMA,
    "emphysema": _EMPHYSEMA,
    "fibrosis": _FIBROSIS,
    "hernia": _HERNIA,
    "fracture": _FRACTURE,
    "support devices": _SUPPORT_DEVICES,
    "pleural thickening": _PLEURAL_THICKENING,
    "enlarged mediastinum": _MEDIASTINUM,
    "lung lesion": _LESION,
    "degenerative change": _DEGENERATIVE,
    "aorta": _AORTA,
    "low lung volumes": _LOW_VOLUMES,
    "spine and bone": _SPINE,
    "diaphragm": _DIAPHRAGM,
    "markings": _MARKINGS,
    "lymphadenopathy": _LYMPH,
    "pulmonary artery": _VASCULAR,
    "surgery": _SURGERY,
    "other findings": _OTHER_FINDINGS,
    "abnormal": [r"abnormal(?:ity|ities|ly)?"],
}
"""Disjoint term families: every finding the supported vocabularies (and the IU X-ray MeSH
heads) can name. The whole-study labels mask all of them."""

LABEL_TERMS: dict[str, list[str]] = {
    # IU X-ray default findings
    "cardiomegaly": _CARDIOMEGALY,
    "pulmonary atelectasis": _ATELECTASIS,
    "calcinosis": _CALCINOSIS,
    "opacity": _OPACITY,
    "calcified granuloma": _GRANULOMA,
    "pleural effusion": _EFFUSION,
    "nodule": _NODULE,
    "airspace disease": _AIRSPACE,
    # CheXpert
    "atelectasis": _ATELECTASIS,
    "consolidation": _AIRSPACE,
    "edema": _EDEMA,
    "enlarged cardiomediastinum": _MEDIASTINUM + _CARDIOMEGALY,
    "fracture": _FRACTURE,
    "lung lesion": _LESION + _NODULE,
    "lung opacity": _OPACITY + _EDEMA + _ATELECTASIS + _PNEUMONIA + _LESION + _NODULE,
    "pleural other": _PLEURAL_THICKENING,
    "pneumonia": _PNEUMONIA + _AIRSPACE,
    "pneumothorax": _PNEUMOTHORAX,
    "support devices": _SUPPORT_DEVICES,
    # NIH ChestX-ray14
    "effusion": _EFFUSION,
    "infiltration": _OPACITY,
    "mass": _NODULE + _LESION,
    "emphysema": _EMPHYSEMA,
    "fibrosis": _FIBROSIS,
    "pleural thickening": _PLEURAL_THICKENING,
    "hernia": _HERNIA,
    # further families, usable as label names of their own
    **{k: v for k, v in FAMILIES.items() if k not in ("enlarged mediastinum",)},
}
"""Phrases that state each label, keyed by lower-case label name (``_`` read as a space).

Whole-study labels (:data:`WHOLE_STUDY_LABELS`) are not listed: they take every family of
:data:`FAMILIES` plus :data:`NORMAL_PHRASES`."""

NORMAL_PHRASES: list[str] = [
    # "no acute cardiopulmonary abnormality", "no evidence of active disease", ...
    (r"(?:no|without|negative for)(?: (?:radiographic|definite|visible|significant|other|xxxx|"
    r"radiographic evidence of|evidence of|evidence for|signs? of|findings of|of))*"
    r"(?: (?:acute|active|significant|new|focal|interval|visible|gross|definite|convincing|"
    r"obvious|radiographic|appreciable)(?:,? or (?:acute|active|chronic))?)+"
    r"(?:,? (?:or )?(?:radiographic|cardiopulmonary|cardiac|pulmonary|intrathoracic|thoracic|"
    r"pleural|preoperative|osseous|bony|skeletal|chest|mediastinal|lung|parenchymal|"
    r"cardiovascular|intrathoracic))*"
    r" (?:abnormalit(?:y|ies)|disease|process(?:es)?|findings?|changes?|pathology|"
    r"issues?|problems?|abnormal findings?)(?: (?:identified|seen|noted|demonstrated|detected))?"),
    r"no (?:(?:acute|active|significant|interval) )?(?:change|abnormalit(?:y|ies))",
    r"(?:no|without) (?:evidence of |radiographic evidence of )?(?:tuberculosis|tb|active tb)",
    # "normal chest", "negative chest x-ray", "stable chest"
    (r"(?:normal|negative|unremarkable|stable|clear)(?: (?:pa and lateral|two view|2 view|frontal and lateral|portable))?"
    r" chest(?: (?:x-ray|x ray|xray|radiographs?|films?|exam(?:ination)?|study|series|views?|"
    r"appearance))?"),
    (r"(?:normal|negative|unremarkable|stable) (?:study|exam(?:ination)?|radiographs?|films?|appearance)"
    r"(?: of the chest)?"),
    r"unremarkable radiographs? of the chest|stable appearance of the chest",
    r"(?:within |upper limits of )?normal limits(?: (?:for|in) (?:size(?: and contour)?|appearance|patient age|age))?",
    r"unremarkable|normal(?:ly)?|negative",
    *CLEAR_LUNGS,
    rf"{HEART_WITH} {LINK}{HEART_STATE}",
    rf"normal {HEART}",
    rf"(?:pulmonary )?(?:vasculature|vascularity)(?: {LINK}(?:normal|within normal limits|unremarkable))?",
    rf"(?:visualized )?(?:bony|osseous|skeletal) (?:structures|thorax) {LINK}(?:intact|normal|unremarkable|without acute abnormality)",
    r"no (?:focal )?(?:consolidation|air ?space disease|pneumothorax|effusion)",
    r"well ?expanded|well ?aerated|normally inflated",
]
"""Stock phrases that state a whole study normal (masked for the normal-vs-abnormal task)."""

PROBE_TERMS: dict[str, list[str]] = {
    "cardiomegaly": [r"silhouette", r"enlarged", r"prominent", r"upper limits?", r"pericardial",
                     r"atri(?:um|al)|ventric(?:le|ular)", r"chf|heart failure|edema", r"sternotomy"],
    "pulmonary atelectasis": [r"streaky", r"linear", r"basilar|bibasilar|bases?", r"volume loss",
                              r"subsegmental", r"scarring", r"opacit(?:y|ies)"],
    "calcinosis": [r"atherosclero(?:sis|tic)", r"aort(?:a|ic)", r"knob", r"dense", r"granulom\w*",
                   r"lymph", r"hil(?:ar|um|a)", r"previous|prior"],
    "opacity": [r"streaky", r"patchy", r"hazy", r"markings", r"scarring", r"atelecta\w+", r"pneumonia",
                r"basilar|bibasilar|bases?", r"retrocardiac"],
    "calcified granuloma": [r"calcifi\w+", r"nodul\w+", r"healed", r"previous|prior", r"infection",
                            r"scattered", r"dense", r"mm|cm", r"innumerable"],
    "pleural effusion": [r"blunt(?:ing|ed)", r"costophrenic", r"fluid", r"layering", r"sulc[iu]s"],
    "nodule": [r"round(?:ed)?", r"densit(?:y|ies)", r"nipple", r"granulom\w*", r"calcifi\w+",
               r"mm|cm", r"measur\w+", r"innumerable", r"ct"],
    "airspace disease": [r"pneumonia", r"infection", r"patchy", r"opacit(?:y|ies)",
                         r"infiltrat\w*", r"lingula"],
    "emphysema": [r"hyperinflated", r"flattened", r"copd", r"lucen\w+", r"bullae"],
    "fibrosis": [r"scarring", r"reticular", r"interstitial", r"chronic"],
    "edema": [r"vascular", r"congest\w*", r"interstitial", r"cephalization", r"kerley"],
}
"""Context words that may still carry a label after masking (reported, never masked).

Labels without an entry get the probes of every label when the task is the whole study
(``abnormal``) and none otherwise.
"""
PROBE_TERMS["abnormal"] = [
    r"right|left|bilateral", r"lobes?|lingula|midlung|bases?|apex|apical", r"aort(?:a|ic)",
    r"spine|t-spine|vertebra\w*|thoracolumbar|endplate", r"hil(?:um|ar|a)|lymph|paratracheal",
    r"prior|previous|again|interval|stable|unchanged|compared", r"noted|seen|present",
    r"versus|consistent|compatible|represent\w*|suggest\w*|may|could|likely",
    r"mm|cm|measur\w+", r"tip|svc|atrium", r"follow ?up|recommend\w*|ct|correlat\w+",
]
"""Whole-study probes: anatomy, location, comparison and hedging words are rarely written
about a normal study (measured on the IU X-ray reports after masking)."""
PROBE_TERMS["atelectasis"] = PROBE_TERMS["pulmonary atelectasis"]
PROBE_TERMS["effusion"] = PROBE_TERMS["pleural effusion"]
PROBE_TERMS["consolidation"] = PROBE_TERMS["airspace disease"]
PROBE_TERMS["lung opacity"] = PROBE_TERMS["opacity"]
PROBE_TERMS["infiltration"] = PROBE_TERMS["opacity"]
PROBE_TERMS["mass"] = PROBE_TERMS["nodule"]
PROBE_TERMS["lung lesion"] = PROBE_TERMS["nodule"]
PROBE_TERMS["pneumonia"] = PROBE_TERMS["airspace disease"]
PROBE_TERMS["enlarged cardiomediastinum"] = PROBE_TERMS["cardiomegaly"]

WHOLE_STUDY_LABELS: frozenset[str] = frozenset({"abnormal", "no finding", "normal"})
"""Labels that any finding statement reveals: they mask every family plus NORMAL_PHRASES."""
