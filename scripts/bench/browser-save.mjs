// The browser part of `npm run bench` for a person's own file (issue 13): the production build in
// Chromium, an image opened through "Open image" (the picker stubbed with a real handle in the
// origin private file system of an on-disk profile, copied sparsely), then through the UI itself:
//   create / revert / delete = the last click (Create, Confirm) to the updated save bar and table
//   save                     = the click on Save (or "Rewrite and save") to the save bar gone
// and, on the same file in the same run, the two ways Chromium can rewrite it atomically:
//   keep   = createWritable({keepExistingData: true}) + close(), no writes (Chromium's own copy)
//   stream = a fresh createWritable() fed with the file's slices (what our save does)
// Images: qemu-img create SIZE, qemu-io writes over half the disk, two snapshots (s1, s2).
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CHROMIUM_ARGS, dataSegments, serve } from './browser.mjs';

const HALF = { '256M': '128M', '2G': '1G', '8G': '4G' };

function must(cmd, args) {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr}`);
}

/** The image for one size, made once in `dir`. */
function image(dir, size) {
  const file = path.join(dir, `save-${size}.qcow2`);
  if (fs.existsSync(file)) return file;
  const tmp = file + '.part';
  must('qemu-img', ['create', '-q', '-f', 'qcow2', tmp, size]);
  must('qemu-io', ['-f', 'qcow2', '-c', `write -P 0x5a 0 ${HALF[size]}`, tmp]);
  must('qemu-img', ['snapshot', '-c', 's1', tmp]);
  must('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x6b 0 16M', tmp]);
  must('qemu-img', ['snapshot', '-c', 's2', tmp]);
  fs.renameSync(tmp, file);
  return file;
}

/** In the page: when the last click happened, and when a condition on the page first held after it. */
const WATCH = `
window.__lastClick = 0;
document.addEventListener('click', () => { window.__lastClick = performance.now(); }, true);
window.__watch = (fn) => {
  window.__doneAt = 0;
  const check = () => { if (!window.__doneAt && fn()) window.__doneAt = performance.now(); };
  const mo = new MutationObserver(check);
  mo.observe(document.body, { subtree: true, childList: true, characterData: true, attributes: true });
  window.__stopWatch = () => mo.disconnect();
};`;

export async function runSaveBench({ root, dir, sizes }) {
  const web = path.join(dir, 'web-save');
  fs.rmSync(web, { recursive: true, force: true });
  if (!fs.existsSync(path.join(root, 'dist/web/index.html'))) return { skipped: 'no production build of the web app (npm run build:web)' };
  fs.cpSync(path.join(root, 'dist/web'), web, { recursive: true });
  const chromium = ['/usr/bin/chromium', process.env.CHROMIUM_PATH].find((p) => p && fs.existsSync(p));
  if (!chromium) return { skipped: 'Chromium not found (/usr/bin/chromium, apt package chromium)' };
  const pw = await import('@playwright/test');
  const server = await serve(web);
  const url = `http://127.0.0.1:${server.address().port}/`;
  const out = { chromium: spawnSync(chromium, ['--version'], { encoding: 'utf8' }).stdout.trim(), results: [] };
  try {
    for (const size of sizes) {
      const file = image(dir, size);
      process.stderr.write(`bench: browser save ${size}...\n`);
      const profile = path.join(dir, 'chromium-profile-save');
      fs.rmSync(profile, { recursive: true, force: true });
      const ctx = await pw.chromium.launchPersistentContext(profile, { executablePath: chromium, args: CHROMIUM_ARGS, headless: true, viewport: { width: 1440, height: 900 } });
      try {
        out.results.push({ size, fileSize: fs.statSync(file).size, ...(await oneSize(ctx, url, file)) });
      } catch (e) {
        out.results.push({ size, error: e.message });
      } finally {
        await ctx.close();
        fs.rmSync(profile, { recursive: true, force: true });
      }
    }
  } finally {
    server.close();
  }
  return out;
}

/** Run a step, naming it in its error. */
async function step(name, body) {
  try {
    return await body();
  } catch (e) {
    throw new Error(`${name}: ${e.message}`);
  }
}

async function oneSize(ctx, url, file) {
  const page = ctx.pages()[0] ?? (await ctx.newPage());
  page.setDefaultTimeout(Number(process.env.BENCH_STEP_TIMEOUT_MS ?? 10 * 60 * 1000));
  await page.addInitScript(() => {
    window.showOpenFilePicker = async () => [await (await navigator.storage.getDirectory()).getFileHandle('bench.qcow2')];
  });
  await page.goto(url);
  // the image into OPFS, sparsely: only its data segments, then its size
  await page.evaluate(() => {
    const input = document.createElement('input');
    input.type = 'file';
    input.id = '__bench_file';
    input.hidden = true;
    document.body.append(input);
  });
  await page.setInputFiles('#__bench_file', file);
  await step('copy into OPFS', () => page.evaluate(async ({ segments, size }) => {
    const f = document.getElementById('__bench_file').files[0];
    const h = await (await navigator.storage.getDirectory()).getFileHandle('bench.qcow2', { create: true });
    const w = await h.createWritable();
    for (const [a, b] of segments) await w.write({ type: 'write', position: a, data: f.slice(a, b) });
    await w.truncate(size);
    await w.close();
    document.getElementById('__bench_file').remove();
  }, { segments: dataSegments(file), size: fs.statSync(file).size }));

  await page.evaluate(WATCH);
  await page.getByRole('button', { name: 'Open image' }).click();
  await page.getByRole('tab', { name: 'bench.qcow2' }).waitFor();
  await page.getByRole('navigation', { name: 'Views' }).getByRole('link', { name: 'Snapshots', exact: true }).click();
  const bar = page.getByRole('group', { name: 'Unsaved changes' });
  /** ms from the last click to `cond` holding on the page. */
  const timed = async (cond, clicks) => {
    await page.evaluate(`window.__watch(${cond})`);
    await clicks();
    await page.waitForFunction(() => window.__doneAt > 0, null, { polling: 10 });
    return page.evaluate(() => {
      window.__stopWatch();
      return window.__doneAt - window.__lastClick;
    });
  };
  const barSays = (n) => `() => (document.querySelector('[aria-label="Unsaved changes"]')?.textContent ?? '').includes('${n} unsaved change')`;
  const r = {};
  await page.getByRole('textbox', { name: 'Snapshot name' }).fill('b1');
  r.createMs = await timed(barSays(1), async () => {
    await page.getByRole('button', { name: 'Create snapshot' }).click();
    await page.getByRole('button', { name: 'No VM is running: go on' }).click();
  });
  r.revertMs = await timed(barSays(2), async () => {
    await page.getByRole('button', { name: 'Revert to s1' }).click();
    await page.getByRole('dialog').getByRole('button', { name: 'Confirm' }).click();
  });
  r.deleteMs = await timed(barSays(3), async () => {
    await page.getByRole('button', { name: 'Delete s2' }).click();
    await page.getByRole('dialog').getByRole('button', { name: 'Confirm' }).click();
  });
  r.saveMs = await timed(`() => !document.querySelector('[aria-label="Unsaved changes"]')`, async () => {
    await bar.getByRole('button', { name: 'Save', exact: true }).click();
    const costly = page.getByRole('button', { name: 'Rewrite and save' });
    if (await costly.isVisible().catch(() => false)) await costly.click();
    else await page.waitForTimeout(0);
  });
  const alert = await page.getByRole('alert').textContent().catch(() => null);
  if (alert) throw new Error(`the app said: ${alert}`);
  // the two ways to rewrite the file, on the same file
  Object.assign(r, await step('copies', () => page.evaluate(async () => {
    const h = await (await navigator.storage.getDirectory()).getFileHandle('bench.qcow2');
    let t = performance.now();
    let w = await h.createWritable({ keepExistingData: true });
    await w.close();
    const keepMs = performance.now() - t;
    const f = await h.getFile();
    t = performance.now();
    w = await h.createWritable();
    for (let at = 0; at < f.size; at += 16 << 20) await w.write({ type: 'write', position: at, data: f.slice(at, Math.min(f.size, at + (16 << 20))) });
    await w.close();
    const streamMs = performance.now() - t;
    return { keepMs, streamMs };
  })));
  return r;
}

export function saveTable(b) {
  if (!b) return '';
  if (b.skipped || b.error) return `browser save: ${b.skipped ?? 'failed: ' + b.error}`;
  const s = (ms) => (ms / 1000).toFixed(3);
  const lines = [`browser, a person's file through "Open image" (${b.chromium}; from the last click to the page updated; seconds):`,
    '| image | file | create | revert | delete | save (3 ops) | keepExistingData copy | stream copy | save / copy |', '|---|---|---|---|---|---|---|---|---|'];
  for (const r of b.results) {
    if (r.error) lines.push(`| ${r.size} | — | failed: ${r.error} |`);
    else lines.push(`| ${r.size} | ${(r.fileSize / 2 ** 20).toFixed(0)} MiB | ${s(r.createMs)} | ${s(r.revertMs)} | ${s(r.deleteMs)} | ${s(r.saveMs)} | ${s(r.keepMs)} | ${s(r.streamMs)} | ${(r.saveMs / r.keepMs).toFixed(2)} |`);
  }
  return lines.join('\n');
}
