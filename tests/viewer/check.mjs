// Drive stock OHIF in Debian's headless chromium and check what it shows of our result objects.
//
// Usage: node check.mjs CONFIG.json   (written by harness.py; the report goes to config.report)
//
// For each study the config lists the steps to run ("list", "mr", "seg", "sr", "overlay",
// "pdf") and what the viewer must show (expect, computed in Python from the phantom and the
// encoded objects). Every step passes only if its own checks hold AND nothing went wrong while it
// ran: no page error, no console error, no HTTP status >= 400, no OHIF error boundary.
// Checks read the app's state (window.services, window.cornerstone, window.cornerstoneTools)
// rather than comparing screenshots; screenshots are saved for people.
// Waiting: every check first polls (settle) until the viewer has reached the state the check
// reads (the slice shown, its labelmap rendered, the canvas drawn), with a generous deadline, and
// then checks that state; nothing waits a fixed time for a result (the suite runs on loaded CPUs).
import fs from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';

const cfg = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const T = cfg.timeouts || { boot: 90000, step: 45000 };
const ERROR_BOUNDARY = /Something went wrong/i;

/** Problems seen while a step runs (page errors, console errors, HTTP >= 400). */
class Watch {
  constructor(page) {
    this.events = [];
    page.on('pageerror', e => this.events.push(`pageerror: ${e.message} at ${(e.stack || '').split('\n').slice(1, 3).join(' ').trim()}`));
    page.on('console', m => {
      const text = m.text();
      if (m.type() === 'error') this.events.push(`console.error: ${text.slice(0, 500)}`);
      else if (/Error Boundary/.test(text)) this.events.push(`error boundary: ${text.slice(0, 500)}`);
    });
    page.on('response', r => {
      if (r.status() >= 400) this.events.push(`HTTP ${r.status()} ${r.url()}`);
    });
    page.on('requestfailed', r => {
      const why = r.failure()?.errorText || '';
      if (!/ERR_ABORTED/.test(why)) this.events.push(`request failed: ${r.url()} ${why}`);
    });
  }
  take() { const e = this.events; this.events = []; return e; }
}

async function launch() {
  const profile = fs.mkdtempSync(path.join(cfg.tmp, 'chromium-profile-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: cfg.chromium || '/usr/bin/chromium',
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    viewport: { width: 1400, height: 900 },
  });
  // OHIF's first-run tour covers the viewer unless it is marked as seen.
  // (Frames without storage, such as chromium's PDF viewer, are left alone.)
  await context.addInitScript(() => {
    try { window.localStorage?.setItem('shownTours', JSON.stringify(['basicViewerTour'])); } catch (e) { /* no storage */ }
  });
  // Every text cornerstone draws next to an annotation, collected when it is drawn (a capturing
  // listener sees the non-bubbling event on any viewport element): what the SR step checks.
  // Also counts the renders per image shown (what the SR step waits for after each arrow click).
  await context.addInitScript(() => {
    window.__drawnText = new Set();
    window.__rendersOn = {};
    document.addEventListener('CORNERSTONE_TOOLS_ANNOTATION_RENDERED', e => {
      for (const t of document.querySelectorAll('svg text')) window.__drawnText.add(t.textContent);
      let id = null;
      try { id = window.cornerstone.getEnabledElement(e.detail.element).viewport.getCurrentImageId(); } catch (err) { /* not a viewport */ }
      if (id) window.__rendersOn[id] = (window.__rendersOn[id] || 0) + 1;
    }, true);
  });
  return context;
}

const sleep = ms => new Promise(r => setTimeout(r, ms));

/** Read the app's state with `read` until `ready(state)` holds or `timeout` ms pass; returns the
 * last state read, so the caller's checks report what the viewer showed at the deadline. */
async function settle(read, ready, timeout = T.step) {
  const end = Date.now() + timeout;
  let state = await read();
  while (!ready(state) && Date.now() < end) {
    await sleep(250);
    state = await read();
  }
  return state;
}

async function shot(page, name) {
  const file = path.join(cfg.out, `${name}.png`);
  await page.screenshot({ path: file });
  return file;
}

async function errorBoundaryShown(page) {
  return ERROR_BOUNDARY.test(await page.locator('body').innerText().catch(() => ''));
}

// ---------------------------------------------------------------------------------------------
// in-page helpers (run with page.evaluate; they only read state)

function pageDisplaySets() {
  return window.services.displaySetService.getActiveDisplaySets().map(d => ({
    id: d.displaySetInstanceUID, series: d.SeriesInstanceUID, modality: d.Modality,
    description: d.SeriesDescription, frames: d.numImageFrames ?? null,
    unsupported: !!d.unsupported, loaded: d.isLoaded ?? null,
  }));
}

function pageViewport() {
  const { viewportGridService, cornerstoneViewportService } = window.services;
  const id = viewportGridService.getActiveViewportId();
  const state = viewportGridService.getState().viewports.get(id);
  const out = { id, displaySets: state?.displaySetInstanceUIDs || [] };
  const vp = cornerstoneViewportService.getCornerstoneViewport(id);
  if (!vp) return out;
  out.imageId = vp.getCurrentImageId?.() || null;
  out.imageIndex = vp.getCurrentImageIdIndex?.() ?? null;
  out.imageCount = vp.getImageIds?.().length ?? null;
  const canvas = vp.canvas || vp.getCanvas?.();
  if (canvas) {
    // Spread of the grey values actually drawn: a blank or uniform canvas has none.
    const ctx = canvas.getContext('2d', { willReadFrequently: true });
    if (ctx) {
      const { data } = ctx.getImageData(0, 0, canvas.width, canvas.height);
      let min = 255, max = 0, lit = 0;
      for (let i = 0; i < data.length; i += 4 * 7) {
        const v = (data[i] + data[i + 1] + data[i + 2]) / 3;
        if (v < min) min = v; if (v > max) max = v; if (v > 16) lit += 1;
      }
      out.canvas = { width: canvas.width, height: canvas.height, min, max, litSamples: lit };
    }
  }
  return out;
}

function pageSegmentation(probe) {
  const { segmentationService, viewportGridService } = window.services;
  // An image by its key "<SOP Instance UID>/frames/<n>" (the tail of a WADO-RS image ID): the
  // frames of an Enhanced MR object share one SOP Instance UID.
  const imageKey = id => (id.match(/\/instances\/([^/]+\/frames\/\d+)$/) || [])[1] || id;
  const segs = segmentationService.getSegmentations();
  if (!segs.length) return { count: 0 };
  const seg = segs[0];
  const segments = Object.values(seg.segments).filter(Boolean)
    .sort((a, b) => a.segmentIndex - b.segmentIndex)
    .map(s => ({ index: s.segmentIndex, label: s.label }));
  const lm = seg.representationData?.Labelmap || {};
  const perSop = {};
  let probeValue = null;
  (lm.imageIds || []).forEach((imageId, i) => {
    const image = window.cornerstone.cache.getImage(imageId);
    const ref = (lm.referencedImageIds || [])[i] || '';
    const key = imageKey(ref);
    if (!image) { perSop[key] = null; return; }
    const px = image.voxelManager?.getScalarData?.() || image.getPixelData();
    const hist = {};
    for (let j = 0; j < px.length; j++) if (px[j]) hist[px[j]] = (hist[px[j]] || 0) + 1;
    perSop[key] = hist;
    if (key === probe.image_key) probeValue = px[probe.row * image.columns + probe.col];
  });
  const viewportId = viewportGridService.getActiveViewportId();
  const reps = segmentationService.getSegmentationRepresentations(viewportId) || [];
  // Ready when every labelmap image is cached, the viewport shows the probe's slice and has a
  // labelmap actor for each labelmap image of that slice (what the world lookup below reads).
  const vpNow = window.services.cornerstoneViewportService.getCornerstoneViewport(viewportId);
  const onProbe = imageKey(vpNow?.getCurrentImageId?.() || '') === probe.image_key;
  const probeLabelmaps = (lm.imageIds || []).filter((id, i) =>
    imageKey((lm.referencedImageIds || [])[i] || '') === probe.image_key);
  const actorRefs = new Set((vpNow?.getActors?.() || []).map(a => a.referencedId));
  const ready = onProbe && probeLabelmaps.length > 0 && Object.values(perSop).every(h => h !== null)
    && probeLabelmaps.every(id => actorRefs.has(id));
  // The segment the viewer finds at the probe's patient position (its own geometry mapping).
  let worldValue = null;
  try {
    const viewport = window.services.cornerstoneViewportService.getCornerstoneViewport(viewportId);
    worldValue = window.cornerstoneTools.utilities.segmentation.getSegmentIndexAtWorldPoint(
      seg.segmentationId, probe.world, { viewport });
  } catch (e) { worldValue = `error: ${e.message}`; }
  return {
    count: segs.length, label: seg.label, segments, perSop, probeValue, worldValue, ready,
    representations: reps.map(r => ({ type: r.type, visible: r.visible, segmentationId: r.segmentationId })),
  };
}

function pageSR(seriesUid) {
  const ds = window.services.displaySetService.getActiveDisplaySets()
    .find(d => d.SeriesInstanceUID === seriesUid);
  if (!ds) return null;
  const annotations = window.cornerstoneTools.annotation.state.getAllAnnotations?.() || [];
  const svgText = Array.from(document.querySelectorAll('svg text')).map(t => t.textContent);
  return {
    loaded: ds.isLoaded,
    measurements: (ds.measurements || []).map(m => ({
      id: m.TrackingIdentifier, loaded: m.loaded, coords: (m.coords || []).length,
      labels: (m.labels || []).map(l => [l.label, l.value]),
    })),
    annotations: annotations.filter(a => a.metadata?.toolName === 'DICOMSRDisplay').length,
    svgText,
  };
}

async function pagePdf() {
  const obj = document.querySelector('object[type="application/pdf"]');
  if (!obj || !obj.data) return { found: !!obj };
  const r = await fetch(obj.data);
  const buf = new Uint8Array(await r.arrayBuffer());
  return {
    found: true, status: r.status, bytes: buf.length,
    magic: String.fromCharCode(...buf.slice(0, 5)),
    rendered: obj.getBoundingClientRect().width > 100,
  };
}

// ---------------------------------------------------------------------------------------------
// steps

async function openViewer(page, study) {
  await page.goto(`${cfg.base}/viewer?StudyInstanceUIDs=${study.uid}`);
  await page.waitForFunction(n => {
    const s = window.services?.displaySetService;
    return s && s.getActiveDisplaySets().length >= n;
  }, study.expect.display_sets, { timeout: T.boot });
  await page.waitForFunction(() => {
    const { viewportGridService, cornerstoneViewportService } = window.services;
    const vp = cornerstoneViewportService.getCornerstoneViewport(viewportGridService.getActiveViewportId());
    return !!vp?.getCurrentImageId?.() && !!window.cornerstone.cache.getImage(vp.getCurrentImageId());
  }, null, { timeout: T.step });
}

async function thumbnail(page, seriesUid) {
  const sets = await page.evaluate(pageDisplaySets);
  const ds = sets.find(d => d.series === seriesUid);
  if (!ds) throw new Error(`no display set for series ${seriesUid}`);
  const thumb = page.locator(`[id="thumbnail-${ds.id}"]`);
  await thumb.scrollIntoViewIfNeeded();
  await thumb.dblclick();
  return ds;
}

async function waitViewportSeries(page, seriesUid, what) {
  await page.waitForFunction(uid => {
    const { viewportGridService, cornerstoneViewportService } = window.services;
    const vp = cornerstoneViewportService.getCornerstoneViewport(viewportGridService.getActiveViewportId());
    const id = vp?.getCurrentImageId?.();
    return !!id && id.includes(`/series/${uid}/`) && !!window.cornerstone.cache.getImage(id);
  }, seriesUid, { timeout: T.step }).catch(() => { throw new Error(`${what} never showed in the viewport`); });
}

/** Adds to `problems` what shows the viewport has not drawn the series; returns `problems`. */
function rendered(vp, seriesUid, what, problems) {
  if (!vp.imageId || !vp.imageId.includes(`/series/${seriesUid}/`)) {
    problems.push(`${what}: viewport shows ${vp.imageId}, not series ${seriesUid}`);
  }
  const c = vp.canvas;
  if (!c) problems.push(`${what}: no canvas`);
  else if (c.max - c.min < 40 || c.litSamples < 50) {
    problems.push(`${what}: canvas looks blank (min ${c.min}, max ${c.max}, lit ${c.litSamples})`);
  }
  return problems;
}

const steps = {
  async list(page, study) {
    await page.goto(`${cfg.base}/`);
    const row = page.getByText(study.expect.patient_name_shown, { exact: false }).first();
    await row.waitFor({ timeout: T.boot });
    // the list fills in row by row: wait for all of them (or the deadline), then count
    const name = new RegExp(study.expect.patient_name_shown.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'), 'g');
    const count = async () => ((await page.locator('body').innerText()).match(name) || []).length;
    const problems = [];
    const rows = await settle(count, n => n >= cfg.studies_in_pacs);
    if (rows < cfg.studies_in_pacs) problems.push(`study list shows ${rows} rows, expected ${cfg.studies_in_pacs}`);
    return { problems, details: { rows } };
  },

  async mr(page, study) {
    await openViewer(page, study);
    const e = study.expect;
    const sets = await page.evaluate(pageDisplaySets);
    const problems = [];
    for (const [kind, uid] of Object.entries(e.series)) {
      const ds = sets.find(d => d.series === uid);
      if (!ds) problems.push(`no display set for the ${kind} series`);
      else if (ds.unsupported) problems.push(`${kind} display set is unsupported`);
    }
    const vp = await settle(() => page.evaluate(pageViewport),
      v => !rendered(v, e.series.mr, 'MR', []).length && v.imageCount === e.slices);
    rendered(vp, e.series.mr, 'MR', problems);
    if (vp.imageCount !== e.slices) problems.push(`MR viewport has ${vp.imageCount} images, expected ${e.slices}`);
    return { problems, details: { displaySets: sets, viewport: vp } };
  },

  async seg(page, study) {
    const e = study.expect;
    await thumbnail(page, e.series.seg);
    // OHIF asks before it "hydrates" a SEG into the viewport.
    const yes = page.getByRole('button', { name: 'Yes' });
    await yes.click({ timeout: T.step }).catch(() => {});
    await page.waitForFunction(n => {
      const segs = window.services.segmentationService.getSegmentations();
      const lm = segs[0]?.representationData?.Labelmap;
      return segs.length && Object.values(segs[0].segments).filter(Boolean).length >= n && lm?.imageIds?.length;
    }, e.segment_names.length, { timeout: T.step }).catch(() => { throw new Error('the SEG never loaded as a segmentation'); });
    // Go to the probe's slice (as a reader scrolls there): the world-position lookup below uses
    // what the viewport shows, and the screenshot shows it too.
    await page.evaluate(key => {
      const { viewportGridService, cornerstoneViewportService } = window.services;
      const vp = cornerstoneViewportService.getCornerstoneViewport(viewportGridService.getActiveViewportId());
      const k = vp.getImageIds().findIndex(id => id.endsWith(`/instances/${key}`));
      return vp.setImageIdIndex(k);
    }, e.probe.image_key).catch(() => {});
    // The world lookup reads the labelmap actor of the slice on screen: wait until it is there.
    const got = await settle(() => page.evaluate(pageSegmentation, e.probe), g => g.ready);
    const problems = [];
    if (!got.ready) problems.push(`the probe's slice ${e.probe.slice} and its labelmap were not rendered within ${T.step} ms`);
    const names = got.segments.map(s => s.label);
    if (JSON.stringify(names) !== JSON.stringify(e.segment_names)) {
      problems.push(`segment names ${JSON.stringify(names)} != ${JSON.stringify(e.segment_names)}`);
    }
    // Where each segment lies: slices (by referenced source image) and voxel counts.
    const sliceOf = Object.fromEntries(e.image_keys.map((u, i) => [u, i]));
    for (const s of got.segments) {
      const want = e.segment_slices[s.label];
      let lo = null, hi = null, voxels = 0;
      for (const [sop, hist] of Object.entries(got.perSop)) {
        const n = hist?.[s.index] || 0;
        if (!n) continue;
        const k = sliceOf[sop];
        if (k === undefined) { problems.push(`${s.label}: drawn on an image outside the MR series (${sop})`); continue; }
        lo = lo === null ? k : Math.min(lo, k); hi = hi === null ? k : Math.max(hi, k); voxels += n;
      }
      const [wantLo, wantHi] = want || [null, null];  // null: an empty segment
      if (lo !== wantLo || hi !== wantHi) problems.push(`${s.label}: on slices ${lo}-${hi}, expected ${want}`);
      if (voxels !== e.segment_voxels[s.label]) problems.push(`${s.label}: ${voxels} voxels, expected ${e.segment_voxels[s.label]}`);
    }
    const probeIndex = got.segments.find(s => s.label === e.probe.segment)?.index;
    if (probeIndex === undefined || got.probeValue !== probeIndex) {
      problems.push(`probe voxel (slice ${e.probe.slice}, row ${e.probe.row}, col ${e.probe.col}) has segment ${got.probeValue}, expected ${probeIndex} (${e.probe.segment})`);
    }
    if (got.worldValue !== probeIndex) {
      problems.push(`segment at the probe's patient position ${JSON.stringify(e.probe.world)} is ${got.worldValue}, expected ${probeIndex}`);
    }
    const rep = got.representations.find(r => r.type === 'Labelmap');
    if (!rep || !rep.visible) problems.push(`no visible labelmap representation in the viewport: ${JSON.stringify(got.representations)}`);
    delete got.perSop;
    return { problems, details: got };
  },

  async sr(page, study) {
    const e = study.expect;
    await thumbnail(page, e.series.sr);
    await page.waitForFunction(uid => {
      const ds = window.services.displaySetService.getActiveDisplaySets().find(d => d.SeriesInstanceUID === uid);
      return ds?.isLoaded && (ds.measurements || []).length > 0;
    }, e.series.sr, { timeout: T.step }).catch(() => { throw new Error('the SR never loaded'); });
    const groups = Object.keys(e.sr_values);
    const got = await settle(() => page.evaluate(pageSR, e.series.sr), g => g.annotations >= groups.length
      && groups.every(id => g.measurements.some(m => m.id === id && m.loaded)));
    const problems = [];
    const byId = Object.fromEntries(got.measurements.map(m => [m.id, m]));
    for (const id of groups) {
      const m = byId[id];
      if (!m) { problems.push(`SR group ${id} not shown`); continue; }
      if (!m.loaded) problems.push(`SR group ${id} not placed on an image`);
      const shown = m.labels.map(([label, value]) => `${label}: ${value}`);
      for (const want of e.sr_values[id]) {
        if (!shown.includes(want)) problems.push(`SR group ${id}: "${want}" not among ${JSON.stringify(shown)}`);
      }
    }
    if (got.annotations < groups.length) problems.push(`${got.annotations} SR annotations drawn, expected ${groups.length}`);
    // Step through the groups with the viewport's arrows, as a reader does; every text drawn next
    // to an outline is collected as it is drawn (init script). After each click, wait for the
    // viewport to draw its annotations again; at the end, for every group's value to have been
    // drawn (each within the deadline, then checked).
    // An arrow click moves the viewport to the next measurement's image (OHIF: setViewReference
    // on measurements[k].imageId); wait until it shows that image and has drawn its annotations
    // there since the click (nothing to wait for when the image stays the same).
    const drawnText = () => page.evaluate(() => [...window.__drawnText]);
    const view = () => page.evaluate(uid => {
      const { viewportGridService, cornerstoneViewportService, displaySetService } = window.services;
      const vp = cornerstoneViewportService.getCornerstoneViewport(viewportGridService.getActiveViewportId());
      const ds = displaySetService.getActiveDisplaySets().find(d => d.SeriesInstanceUID === uid);
      return { image: vp?.getCurrentImageId?.() || null, renders: { ...window.__rendersOn },
        targets: (ds?.measurements || []).map(m => m.imageId) };
    }, e.series.sr);
    const arrow = page.locator('[data-cy="viewport-action-arrows-right"] svg').first();
    let now = await view();
    for (let i = 0; i < groups.length && !problems.length; i++) {
      if (!(await arrow.isVisible().catch(() => false))) { problems.push('no measurement arrows on the SR viewport'); break; }
      const before = now;
      const target = before.targets[(i + 1) % Math.max(before.targets.length, 1)];
      await arrow.click();
      now = await settle(view, v => target === before.image
        || (v.image === target && (v.renders[target] || 0) > (before.renders[target] || 0)));
    }
    const firsts = groups.map(id => e.sr_values[id][0]);
    const drawn = new Set(problems.length ? await drawnText()  // already failed: no more waiting
      : await settle(drawnText, texts => firsts.every(f => texts.some(t => t.includes(f)))));
    for (const id of groups) {
      const first = e.sr_values[id][0];
      if (![...drawn].some(t => t.includes(first))) problems.push(`SR group ${id}: "${first}" never drawn on the image`);
    }
    got.svgText = [...drawn];
    return { problems, details: { measurements: got.measurements.length, annotations: got.annotations, svgText: got.svgText } };
  },

  async overlay(page, study) {
    const e = study.expect;
    await thumbnail(page, e.series.overlay);
    await waitViewportSeries(page, e.series.overlay, 'the overlay series');
    const vp = await settle(() => page.evaluate(pageViewport),
      v => !rendered(v, e.series.overlay, 'overlay', []).length && v.imageCount === e.slices);
    const problems = [];
    rendered(vp, e.series.overlay, 'overlay', problems);
    if (vp.imageCount !== e.slices) problems.push(`overlay viewport has ${vp.imageCount} images, expected ${e.slices}`);
    return { problems, details: { viewport: vp } };
  },

  async pdf(page, study) {
    const e = study.expect;
    await thumbnail(page, e.series.pdf);
    await page.locator('object[type="application/pdf"]').first().waitFor({ timeout: T.step })
      .catch(() => { throw new Error('no PDF viewport'); });
    await page.waitForFunction(() => !!document.querySelector('object[type="application/pdf"]')?.data, null,
      { timeout: T.step }).catch(() => { throw new Error('the PDF viewport got no document'); });
    const got = await settle(() => page.evaluate(pagePdf), g => g.magic === '%PDF-' && g.rendered);
    const problems = [];
    if (got.magic !== '%PDF-') problems.push(`the PDF viewport's document starts with ${JSON.stringify(got.magic)}`);
    if (!got.rendered) problems.push('the PDF viewport is not laid out');
    await sleep(1500);  // only for the screenshot (people look at it): chromium's PDF viewer paints
    return { problems, details: got };
  },
};

async function runStudy(context, study, report) {
  const page = await context.newPage();
  const watch = new Watch(page);
  for (const name of study.steps) {
    const t0 = Date.now();
    const result = { study: study.name, step: name, ok: false, problems: [], events: [] };
    try {
      const r = await steps[name](page, study);
      result.problems.push(...r.problems);
      result.details = r.details;
    } catch (err) {
      result.problems.push(`step failed: ${err.message.split('\n')[0]}`);
    }
    // A short grace for late errors of this step to surface (an absence cannot be polled for).
    await sleep(200);
    if (await errorBoundaryShown(page)) result.problems.push('OHIF shows its error boundary ("Something went wrong")');
    result.events = watch.take();
    result.ok = result.problems.length === 0 && result.events.length === 0;
    result.seconds = (Date.now() - t0) / 1000;
    result.screenshot = await shot(page, `${study.name}-${name}`).catch(() => null);
    report.steps.push(result);
    console.log(`${result.ok ? 'ok  ' : 'FAIL'} ${study.name}/${name} ${result.seconds.toFixed(1)}s`,
      result.ok ? '' : JSON.stringify({ problems: result.problems, events: result.events }).slice(0, 2000));
    if (!result.ok && study.stop_on_failure) break;
  }
  await page.close();
}

const report = { steps: [], started: new Date().toISOString() };
const t0 = Date.now();
const context = await launch();
try {
  for (const study of cfg.studies) await runStudy(context, study, report);
} finally {
  report.seconds = (Date.now() - t0) / 1000;
  fs.writeFileSync(cfg.report, JSON.stringify(report, null, 1));
  await context.close();
}
