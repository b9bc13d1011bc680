// Drive the kneenode web console in Debian's headless chromium (playwright-core of tests/viewer).
//
// Usage: node console.mjs CONFIG.json   (written by test_console.py; report: config.report)
//
// One browser session walks the console as an operator and a viewer would. Where the test must
// act outside the browser (send a series with storescu, stop or start the PACS) the script waits
// at a gate: it writes GATE.ready in config.work and waits for GATE.go. Every wait polls for a
// condition with a generous deadline; nothing waits a fixed time (the suite runs on loaded CPUs).
// The report lists what the pages showed; test_console.py checks it against the node's files.
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';

const cfg = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
// playwright-core as tests/viewer installs it (pinned, integrity-checked by npm ci)
const { chromium } = createRequire(path.join(cfg.node_modules, 'x.js'))('playwright-core');
const base = cfg.base;
const report = { steps: [], problems: [], facts: {} };
const save = () => fs.writeFileSync(cfg.report, JSON.stringify(report, null, 1));
const JOB_S = cfg.job_timeout_s || 900;

async function until(what, fn, timeoutS = 120, everyMs = 250) {
  const end = Date.now() + timeoutS * 1000;
  for (;;) {
    const got = await fn();
    if (got) return got;
    if (Date.now() > end) throw new Error(`timed out after ${timeoutS} s waiting for ${what}`);
    await new Promise(r => setTimeout(r, everyMs));
  }
}

async function gate(name) {
  fs.writeFileSync(path.join(cfg.work, `${name}.ready`), '');
  await until(`gate ${name}`, () => fs.existsSync(path.join(cfg.work, `${name}.go`)), 600, 100);
}

async function shot(page, name) {
  const file = path.join(cfg.shots, `console-${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  return file;
}

function watch(page, who) {
  page.on('pageerror', e => report.problems.push(`${who} pageerror: ${e.message}`));
  page.on('console', m => { if (m.type() === 'error') report.problems.push(`${who} console.error: ${m.text().slice(0, 300)}`); });
}

async function login(page, name, password) {
  await page.goto(`${base}/`);
  await page.waitForSelector('form[action="/login"]');
  await page.fill('input[name=name]', name);
  await page.fill('input[name=password]', password);
  await Promise.all([page.waitForNavigation(), page.click('button[type=submit]')]);
}

/** The state of the job on its detail page (the live part refreshes itself). */
const detailState = page => page.locator('#job-state').getAttribute('data-state');

async function step(name, fn) {
  const t = Date.now();
  try {
    const out = await fn();
    report.steps.push({ name, ok: true, seconds: (Date.now() - t) / 1000, ...(out || {}) });
  } catch (e) {
    report.steps.push({ name, ok: false, seconds: (Date.now() - t) / 1000, error: String(e.stack || e) });
    save();
    throw e;
  }
  save();
}

const browser = await chromium.launch({
  executablePath: cfg.chromium || '/usr/bin/chromium', headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});
try {
  const ctx = await browser.newContext({ acceptDownloads: true, viewport: { width: 1400, height: 900 } });
  const page = await ctx.newPage();
  watch(page, 'operator');

  await step('login', async () => {
    await page.goto(`${base}/ui/jobs`);
    await page.waitForSelector('form[action="/login"]');
    const redirected = page.url();
    await shot(page, 'login');
    await page.fill('input[name=name]', cfg.operator.name);
    await page.fill('input[name=password]', cfg.operator.password);
    await Promise.all([page.waitForNavigation(), page.click('button[type=submit]')]);
    return { redirected, landed: page.url(), user: await page.textContent('#user') };
  });

  await step('front', async () => {
    await page.goto(`${base}/`);
    await page.waitForSelector('#health-status');
    await until('every queue to have a worker', async () => (await page.textContent('#health-status')).includes('ok'), 300);
    const text = await page.textContent('#health');
    await shot(page, 'health');
    return { text: text.replace(/\s+/g, ' ').slice(0, 2000) };
  });

  let jobA;
  await step('watch', async () => {
    await page.goto(`${base}/ui/jobs`);
    await page.waitForSelector('#job-rows');
    await page.evaluate(() => { window.__noReload = 'still the same page'; });
    const before = await page.locator('#job-rows tr[data-job]').count();
    await gate('send');  // the test sends the phantom with storescu now
    const row = await until('the sent series to appear in the list', async () => {
      const r = page.locator('#job-rows tr[data-job]');
      return (await r.count()) > before ? r.first() : null;
    }, JOB_S, 100);
    jobA = await row.getAttribute('data-job');
    const seen = [];
    let last = '';
    await until('the job to end on the list page', async () => {
      const r = page.locator(`#job-rows tr[data-job="${jobA}"]`);
      if ((await r.count()) === 0) return false;
      const s = await r.getAttribute('data-state');
      if (s !== last) { seen.push(s); last = s; }
      if (s && s.startsWith('running') && !report.facts.runningShot) {
        report.facts.runningShot = await shot(page, 'jobs-running');
      }
      return ['done', 'failed', 'cancelled', 'ignored'].includes(s);
    }, JOB_S, 200);
    const same = await page.evaluate(() => window.__noReload);
    const refreshed = await page.locator('#job-rows').getAttribute('data-refreshed');
    await shot(page, 'jobs');
    return { job: jobA, before, seen, same_page: same === 'still the same page', refreshed: Number(refreshed) };
  });

  await step('detail', async () => {
    await page.goto(`${base}/ui/jobs/${jobA}`);
    await page.waitForSelector('#stage-table');
    const delivery = await page.locator('#delivery tbody tr').evaluateAll(rows => rows.map(r => r.innerText));
    const events = await page.locator('#events tbody tr').evaluateAll(rows => rows.map(r => r.dataset.kind));
    await shot(page, 'job');
    return { state: await detailState(page), delivery, events, closed_by: await page.textContent('#closed-by') };
  });

  await step('results', async () => {
    await page.click('#results-link');
    await page.waitForSelector('#thickness');
    const images = await until('every result image to load', async () => {
      const got = await page.locator('#images img').evaluateAll(imgs => imgs.map(i => ({ src: i.getAttribute('src'), complete: i.complete, width: i.naturalWidth })));
      return got.length && got.every(i => i.complete) ? got : null;
    }, 60);
    const cells = await page.locator('td[data-key]').evaluateAll(tds => tds.map(td => [td.dataset.key, td.dataset.value, td.textContent.trim()]));
    await shot(page, 'results');
    const [download] = await Promise.all([page.waitForEvent('download'), page.click('#zip-link')]);
    const zip = path.join(cfg.work, 'results.zip');
    await download.saveAs(zip);
    const pdf = await page.evaluate(async url => {
      const r = await fetch(url);
      const b = new Uint8Array(await r.arrayBuffer());
      return { status: r.status, type: r.headers.get('content-type'), head: String.fromCharCode(...b.slice(0, 5)), bytes: b.length };
    }, `${base}/ui/jobs/${jobA}/report.pdf`);
    return { images, cells, zip, pdf };
  });

  await step('resend-fails', async () => {
    await gate('pacs-down');  // the PACS is stopped now
    await page.goto(`${base}/ui/jobs/${jobA}`);
    await page.selectOption('#form-resend select[name=destination]', cfg.destination);
    await Promise.all([page.waitForNavigation(), page.click('#form-resend button')]);
    const flash = await page.textContent('#flash');
    await until('the resend to fail (PACS down)', async () => (await detailState(page)) === 'failed', JOB_S);
    await page.waitForSelector('#job-error');
    const error = await page.textContent('#job-error');
    await shot(page, 'job-failed');
    return { flash, error };
  });

  await step('retry', async () => {
    await gate('pacs-up');  // the PACS is back
    await page.goto(`${base}/ui/jobs/${jobA}`);
    await Promise.all([page.waitForNavigation(), page.click('#form-retry button')]);
    const flash = await page.textContent('#flash');
    await until('the retried job to be done', async () => (await detailState(page)) === 'done', JOB_S);
    const events = await page.locator('#events tbody tr').evaluateAll(rows => rows.map(r => [r.dataset.kind, r.querySelector('.user').textContent]));
    const delivery = await page.locator('#delivery tbody tr').evaluateAll(rows => rows.map(r => r.innerText));
    return { flash, events, delivery };
  });

  await step('csrf', async () => {
    const forged = await page.evaluate(async url => {
      const r = await fetch(url, { method: 'POST', body: new URLSearchParams({ from_stage: 'deliver' }) });
      return { status: r.status, text: (await r.text()).slice(0, 4000) };
    }, `${base}/ui/jobs/${jobA}/retry`);
    return { status: forged.status, csrf_message: forged.text.includes('CSRF token'), state: await (async () => { await page.reload(); return detailState(page); })() };
  });

  await step('viewer', async () => {
    const vctx = await browser.newContext({ viewport: { width: 1400, height: 900 } });
    const v = await vctx.newPage();
    watch(v, 'viewer');
    await login(v, cfg.viewer.name, cfg.viewer.password);
    await v.goto(`${base}/ui/jobs/${jobA}`);
    await v.waitForSelector('#stage-table');
    const actions = await v.locator('#actions').count();
    const posted = await v.evaluate(async url => {
      const token = document.querySelector('input[name=csrf]').value;  // the logout form's
      const r = await fetch(url, { method: 'POST', body: new URLSearchParams({ csrf: token }) });
      return { status: r.status, text: (await r.text()).slice(0, 4000) };
    }, `${base}/ui/jobs/${jobA}/cancel`);
    await vctx.close();
    return { actions_section: actions, status: posted.status, role_message: posted.text.includes('role operator') };
  });
  let jobB;
  await step('upload', async () => {
    await page.goto(`${base}/ui/upload`);
    await page.waitForSelector('#upload-form');
    await page.setInputFiles('input[name=files]', cfg.upload_zip);
    await page.selectOption('select[name=profile]', cfg.upload_profile);
    await shot(page, 'upload');
    await Promise.all([page.waitForNavigation(), page.click('#upload-form button')]);
    const url = page.url();
    jobB = url.split('/').pop();
    await until('the uploaded job to end', async () => ['done', 'failed', 'cancelled', 'ignored'].includes(await detailState(page)), JOB_S);
    const text = await page.textContent('#job-live');
    return { url, job: jobB, state: await detailState(page), profile_shown: text.includes(cfg.upload_profile),
      uploaded_by: text.includes(`upload by ${cfg.operator.name}`) };
  });

  await step('refusals', async () => {
    const out = {};
    for (const [name, file] of Object.entries(cfg.bad_uploads)) {
      await page.goto(`${base}/ui/upload`);
      await page.setInputFiles('input[name=files]', file);
      await Promise.all([page.waitForNavigation(), page.click('#upload-form button')]);
      await page.waitForSelector('#refusal');
      out[name] = await page.textContent('#refusal');
      await shot(page, `upload-refused-${name}`);
    }
    return out;
  });

  await step('front-after', async () => {
    await page.goto(`${base}/`);
    await page.waitForSelector('#health-status');
    await shot(page, 'health-end');
    return { text: (await page.textContent('#health')).replace(/\s+/g, ' ').slice(0, 2000) };
  });
} finally {
  save();
  await browser.close();
}
