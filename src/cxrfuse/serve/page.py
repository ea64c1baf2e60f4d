"""The web page at ``/``: one self-contained HTML file (inline style and script, no external
script, style sheet or font), so it works offline. It reads ``/v1/model`` for the model card
and posts the study to ``/v1/predict``."""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>cxrfuse</title>
<style>
 body { font-family: system-ui, sans-serif; margin: 0; color: #1b1f24; background: #f6f7f9; }
 header { background: #24323f; color: #fff; padding: .8rem 1.4rem; }
 header h1 { font-size: 1.2rem; margin: 0; }
 header p { margin: .2rem 0 0; font-size: .85rem; color: #cfd8e0; }
 main { display: grid; grid-template-columns: minmax(18rem, 26rem) 1fr; gap: 1.2rem;
        padding: 1.2rem; }
 section { background: #fff; border: 1px solid #d8dde3; border-radius: 6px; padding: 1rem; }
 h2 { font-size: 1rem; margin: 0 0 .6rem; }
 #drop { border: 2px dashed #8a99a8; border-radius: 6px; padding: 1.2rem; text-align: center;
         color: #4a5866; cursor: pointer; }
 #drop.over { background: #e8f0f8; }
 label { display: block; font-size: .85rem; margin: .6rem 0 .2rem; }
 textarea, select, input[type=text] { width: 100%; box-sizing: border-box; font: inherit; }
 textarea { min-height: 4rem; }
 button { margin-top: .8rem; padding: .45rem 1.2rem; font: inherit; background: #2c6fbb;
          color: #fff; border: 0; border-radius: 4px; cursor: pointer; }
 button:disabled { background: #8a99a8; }
 .file { display: flex; gap: .5rem; align-items: center; font-size: .85rem; margin: .3rem 0; }
 .file span { flex: 1; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
 .file select { width: 7rem; }
 table { border-collapse: collapse; width: 100%; font-size: .9rem; }
 th, td { border-bottom: 1px solid #e3e7eb; padding: .35rem .5rem; text-align: left; }
 td.num { font-variant-numeric: tabular-nums; }
 tr.pos td.decision { color: #a1261b; font-weight: 600; }
 tr.noskill td.decision { color: #66737f; font-weight: 400; font-style: italic; }
 #verdicts { background: #fff1e5; border-left: 6px solid #d1242f; padding: .5rem .8rem;
             margin: 0 0 .8rem; font-weight: 600; color: #7a1d14; }
 #verdicts li { margin: .2rem 0; }
 .bar { display: inline-block; height: .6rem; background: #2c6fbb; vertical-align: middle; }
 .bar.text { background: #d9822b; }
 #warnings li { color: #7a4b00; margin: .2rem 0; }
 #error { color: #a1261b; font-weight: 600; }
 #overlays { display: flex; flex-wrap: wrap; gap: .6rem; }
 #overlays figure { margin: 0; font-size: .8rem; }
 #overlays img { max-width: 28rem; width: 100%; border: 1px solid #d8dde3; }
 #draft { white-space: pre-wrap; background: #f6f7f9; padding: .6rem; border-radius: 4px; }
 .muted { color: #66737f; font-size: .85rem; }
</style>
</head>
<body>
<header><h1>cxrfuse</h1><p id="card">loading the model card&hellip;</p></header>
<main>
<section>
 <h2>Study</h2>
 <div id="drop" tabindex="0">Drop the views here (PNG, JPEG or DICOM) or click to choose</div>
 <input id="files" type="file" multiple hidden>
 <div id="filelist"></div>
 <label for="indication">Indication</label>
 <textarea id="indication" placeholder="e.g. Cough and fever for three days"></textarea>
 <label for="comparison">Comparison</label>
 <input id="comparison" type="text" placeholder="e.g. None">
 <label><input id="explain" type="checkbox" checked> Grad-CAM overlays and attribution</label>
 <button id="submit" disabled>Predict</button>
 <p id="status" class="muted"></p>
 <p id="error" role="alert"></p>
</section>
<section>
 <h2>Result</h2>
 <div id="verdicts" role="alert" hidden></div>
 <ul id="warnings"></ul>
 <table id="probabilities" hidden>
  <thead><tr><th>label</th><th>probability</th><th>threshold</th><th>decision</th>
   <th>image / report share</th></tr></thead>
  <tbody></tbody>
 </table>
 <p id="thresholds" class="muted"></p>
 <h2>Grad-CAM</h2><div id="overlays" class="muted">none yet</div>
 <h2>Draft report</h2><div id="draft" class="muted">none yet</div>
</section>
</main>
<script>
"use strict";
const VIEWS = ["", "PA", "AP", "LATERAL", "LL"];
const chosen = [];
const $ = (id) => document.getElementById(id);
function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (cls) node.className = cls;
  return node;
}
function fmt(x) { return (x === null || x === undefined) ? "-" : Number(x).toFixed(3); }
function showFiles() {
  const list = $("filelist");
  list.replaceChildren();
  chosen.forEach((item, i) => {
    const row = el("div", undefined, "file");
    row.append(el("span", item.file.name));
    const select = el("select");
    select.setAttribute("aria-label", "view of " + item.file.name);
    VIEWS.forEach((v) => { const o = el("option", v || "view?"); o.value = v; select.append(o); });
    select.value = item.view;
    select.onchange = () => { item.view = select.value; };
    const drop = el("button", "x");
    drop.style.marginTop = "0";
    drop.onclick = () => { chosen.splice(i, 1); showFiles(); };
    row.append(select, drop);
    list.append(row);
  });
  $("submit").disabled = chosen.length === 0;
}
function add(files) {
  for (const file of files) {
    const name = file.name.toLowerCase();
    const view = name.includes("lat") ? "LATERAL" : (name.includes("pa") || name.includes("frontal")) ? "PA" : "";
    chosen.push({ file, view });
  }
  showFiles();
}
const drop = $("drop");
drop.onclick = () => $("files").click();
drop.onkeydown = (e) => { if (e.key === "Enter" || e.key === " ") $("files").click(); };
$("files").onchange = (e) => { add(e.target.files); e.target.value = ""; };
drop.ondragover = (e) => { e.preventDefault(); drop.classList.add("over"); };
drop.ondragleave = () => drop.classList.remove("over");
drop.ondrop = (e) => { e.preventDefault(); drop.classList.remove("over"); add(e.dataTransfer.files); };

async function loadCard() {
  try {
    const card = await (await fetch("v1/model")).json();
    const synthetic = card.training_data.synthetic_images ? " \u2014 trained on SYNTHETIC phantom images" : "";
    $("card").textContent = `run ${card.run} \u00b7 task ${card.task} \u00b7 reads ${card.modalities.join(" + ")}` +
      ` \u00b7 thresholds: ${card.threshold_method || "0.5 (not evaluated)"}${synthetic}`;
    showVerdicts(card.verdicts || []);
  } catch (err) { $("card").textContent = "model card unavailable"; }
}
const NO_SKILL = { chance: "not distinguishable from chance", trivial: "no better than calling every study positive" };
function showVerdicts(verdicts) {
  const box = $("verdicts");
  const bad = verdicts.filter((v) => v.kind in NO_SKILL);
  if (!verdicts.length) { box.hidden = true; return; }
  const list = el("ul");
  verdicts.forEach((v) => list.append(el("li", v.message)));
  const head = bad.length ? "On its test set this model is " + [...new Set(bad.map((v) => NO_SKILL[v.kind]))].join(" and ") +
    " for " + [...new Set(bad.map((v) => v.label || "every label"))].join(", ") +
    ": its probabilities are shown without a positive/negative call." : "Test-set verdicts of this model:";
  box.replaceChildren(el("div", head), list);
  box.hidden = false;
}
function noSkill(kinds) {
  const found = (kinds || []).filter((k) => k in NO_SKILL);
  return found.length ? found.map((k) => NO_SKILL[k]).join("; ") : null;
}
function render(answer) {
  const warnings = $("warnings");
  warnings.replaceChildren(...answer.warnings.map((w) => el("li", w)));
  const body = document.querySelector("#probabilities tbody");
  body.replaceChildren();
  const shares = (answer.attribution && answer.attribution.labels) || {};
  for (const label of answer.labels) {
    const row = el("tr");
    row.dataset.label = label;
    const unskilled = noSkill((answer.verdicts || {})[label]);
    if (unskilled) row.className = "noskill";
    else if (answer.decisions[label]) row.className = "pos";
    row.append(el("td", label), el("td", fmt(answer.probabilities[label]), "num prob"),
               el("td", fmt(answer.thresholds[label]), "num"),
               el("td", unskilled ? unskilled : (answer.decisions[label] ? "positive" : "negative"), "decision"));
    const share = el("td");
    const s = shares[label] || {};
    if (s.image_share !== undefined && s.text_share !== undefined && s.image_share !== null) {
      const a = el("span", undefined, "bar"); a.style.width = (s.image_share * 6) + "rem";
      const b = el("span", undefined, "bar text"); b.style.width = (s.text_share * 6) + "rem";
      share.append(a, b, el("span", ` ${Math.round(s.image_share * 100)}% / ${Math.round(s.text_share * 100)}%`));
    } else { share.textContent = "-"; }
    row.append(share);
    body.append(row);
  }
  $("probabilities").hidden = false;
  $("thresholds").textContent = answer.threshold_method ?
    `thresholds chosen on the validation split (${answer.threshold_method})` : "thresholds: 0.5 (the run was never evaluated)";
  const overlays = $("overlays");
  overlays.replaceChildren();
  for (const o of answer.overlays || []) {
    const fig = el("figure");
    const img = el("img");
    img.src = "data:image/png;base64," + o.png_base64;
    img.alt = `Grad-CAM ${o.view} ${o.label}`;
    fig.append(img, el("figcaption", `${o.image} (${o.view}) \u00b7 ${o.label}: p=${fmt(o.probability)}` +
                       (o.shown === false ? ` \u00b7 no map: ${o.note}` : "")));
    overlays.append(fig);
  }
  if (!overlays.children.length) overlays.textContent = (answer.overlays || answer.attribution) ?
    "none (see the warnings)" : "none (tick Grad-CAM to compute them)";
  const draft = $("draft");
  draft.textContent = answer.report_draft ? answer.report_draft.text +
    `\\n\\n(${answer.report_draft.generator}; ${answer.report_draft.note})` : "no draft report for this run";
}
$("submit").onclick = async () => {
  $("error").textContent = "";
  $("status").textContent = "predicting\u2026";
  $("submit").disabled = true;
  const form = new FormData();
  for (const item of chosen) { form.append("images", item.file, item.file.name); }
  for (const item of chosen) { form.append("views", item.view); }
  const indication = $("indication").value.trim();
  const comparison = $("comparison").value.trim();
  if (indication) form.append("indication", indication);
  if (comparison) form.append("comparison", comparison);
  form.append("explain", $("explain").checked ? "true" : "false");
  try {
    const response = await fetch("v1/predict", { method: "POST", body: form });
    const answer = await response.json();
    if (!response.ok) { $("error").textContent = answer.error || response.statusText; }
    else { render(answer); }
    $("status").textContent = response.ok ? "done" : "";
  } catch (err) {
    $("error").textContent = "request failed: " + err;
    $("status").textContent = "";
  } finally { $("submit").disabled = chosen.length === 0; }
};
loadCard();
</script>
</body>
</html>
"""
