// The browser part of `npm run bench` for a person's own file (issue 13): the production build in
// Chromium, an image opened through "Open image" (the picker stubbed with a real handle in the
// origin private file system of an on-disk profile, copied sparsely), then through the UI itself:
//   create / revert / delete = the last click (Create, Confirm) to the updated save bar and table
//   save                     = the click on Save (or "Rewrite and save") to the save bar gone
// and, on the same file in the same run, the two ways Chromium can rewrite it atomically:
//   keep   = createWritable({keepExistingData: true}) + close(), no writes (Chromium's own copy)
//   stream = a fresh createWritable() fed with the file's slices (what our save does)
//   memory                   = the peak resident set of the tab's renderer process (renderer-memory.mjs)
//                              while the changes are pending (open to Save) and during Save
// Images: qemu-img create SIZE, qemu-io writes over half the disk, two snapshots (s1, s2); or,
// for `meta-SIZE`, `-o preallocation=metadata` and the same two snapshots, where only the
// operations and the memory are timed (a save would write SIZE of zeros). Chromium's quota counts
// a file's logical size; a `meta-SIZE` larger than it is opened as a File (a dropped file: the
// same engine, the pending pages in memory, no save bar) and said so in the `source` column.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CHROMIUM_ARGS, dataSegments, serve } from './browser.mjs';
import { rendererOf, sampleRenderers } from './renderer-memory.mjs';

const HALF = { '256M': '128M', '2G': '1G', '8G': '4G' };
/** Chromium's per-origin quota is a few GiB unless storage is unlimited (then: about the free disk). */
const ARGS = [...CHROMIUM_ARGS, '--unlimited-storage'];

function sizeBytes(s) {
  const m = /^(\d+)([MG]?)$/.exec(s);
  return Number(m[1]) * { '': 1, M: 2 ** 20, G: 2 ** 30 }[m[2]];
}

function must(cmd, args) {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr}`);
}

/** The image for one size, made once in `dir`. */
function image(dir, size) {
  const file = path.join(dir, `save-${size}.qcow2`);
  if (fs.existsSync(file)) return file;
  const tmp = file + '.part';
  const meta = size.startsWith('meta-');
  if (!meta && !HALF[size]) throw new Error(`no image for ${size} (known: ${Object.keys(HALF).join(', ')}, meta-SIZE)`);
  if (meta) must('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'preallocation=metadata', tmp, size.slice(5)]);
  else must('qemu-img', ['create', '-q', '-f', 'qcow2', tmp, size]);
  // qemu-io takes at most 2 GiB per request: the data in writes of 1 GiB at most
  const half = sizeBytes(HALF[size] ?? '0');
  const writes = [];
  for (let at = 0; at < half; at += 2 ** 30) writes.push('-c', `write -P 0x5a ${at} ${Math.min(2 ** 30, half - at)}`);
  if (!meta) must('qemu-io', ['-f', 'qcow2', ...writes, tmp]);
  must('qemu-img', ['snapshot', '-c', 's1', tmp]);
  must('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x6b 0 16M', tmp]);
  must('qemu-img', ['snapshot', '-c', 's2', tmp]);
  fs.renameSync(tmp, file);
  return file;
}

/**
 * BENCH_SAVE_META=1: a `meta-SIZE` image opened through the handle path is saved too (no copies
 * to compare with: each would write SIZE again). The save writes SIZE of zeros: it needs that much
 * free disk, which the run samples (`diskMiB`: the most the file system's free space fell).
 */
const SAVE_META = !!process.env.BENCH_SAVE_META;

/** How far the free space of the file system holding `dir` falls below where it was, sampled each second until stop(). */
function diskUse(dir) {
  const free = () => { const s = fs.statfsSync(dir); return s.bavail * s.bsize; };
  const start = free();
  let low = start;
  const timer = setInterval(() => { low = Math.min(low, free()); }, 1000);
  return { stop: () => { clearInterval(timer); low = Math.min(low, free()); return (start - low) / 2 ** 20; } };
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
      let file;
      try {
        file = image(dir, size);
      } catch (e) {
        out.results.push({ size, error: e.message });
        continue;
      }
      process.stderr.write(`bench: browser save ${size}...\n`);
      const profile = path.join(dir, 'chromium-profile-save');
      fs.rmSync(profile, { recursive: true, force: true });
      const ctx = await pw.chromium.launchPersistentContext(profile, { executablePath: chromium, args: ARGS, headless: true, viewport: { width: 1440, height: 900 } });
      try {
        out.results.push({ size, fileSize: fs.statSync(file).size, ...(await oneSize(ctx, url, file, size.startsWith('meta-'))) });
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

/** BENCH_MEM_TRACE=1: each step's start on stderr (`mark <ms mod 10^6> <step>`), beside renderer-memory.mjs's samples (`mem <ms> <MiB>`). */
const mark = (what) => process.env.BENCH_MEM_TRACE && process.stderr.write(`mark ${Date.now() % 1e6} ${what}\n`);

/** Run a step, naming it in its error. */
async function step(name, body) {
  try {
    return await body();
  } catch (e) {
    throw new Error(`${name}: ${e.message}`);
  }
}

/** In the page: Chromium's own copy of the OPFS file (keepExistingData, no writes), and a stream of its slices into a fresh writable. */
async function copies(page) {
  return step('copies', () => page.evaluate(async () => {
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
    return { keepMs, streamMs: performance.now() - t };
  }));
}

/** A fresh page of the app (its own renderer), the picker stubbed with the OPFS file. */
async function appPage(ctx, url) {
  const page = await ctx.newPage();
  page.setDefaultTimeout(Number(process.env.BENCH_STEP_TIMEOUT_MS ?? 10 * 60 * 1000));
  await page.addInitScript(() => {
    window.showOpenFilePicker = async () => [await (await navigator.storage.getDirectory()).getFileHandle('bench.qcow2')];
  });
  await page.goto(url);
  return page;
}

async function oneSize(ctx, url, file, meta) {
  let { page, pids } = await rendererOf(() => appPage(ctx, url));
  for (const p of ctx.pages()) if (p !== page) await p.close();
  const size = fs.statSync(file).size;
  const quota = await page.evaluate(async () => (await navigator.storage.estimate()).quota ?? 0);
  // The handle path when the file fits the origin's quota (it counts the logical size; a save
  // needs room for the swap file too), else a File.
  const source = size * (meta ? 1.1 : 2.2) < quota ? 'handle' : 'file';
  const r = { source };
  if (source === 'handle') {
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
    }, { segments: dataSegments(file), size }));
    // Chromium's copy before the image is opened, and again after Save: two samples in the run
    if (!meta) r.keepBeforeMs = (await copies(page)).keepMs;
    // the memory measured is the app's own: a fresh page, not the one that read the image
    const fresh = await rendererOf(() => appPage(ctx, url));
    await page.close();
    ({ page, pids } = fresh);
  }

  await page.evaluate(WATCH);
  const mem = sampleRenderers(pids);
  if (source === 'handle') {
    await page.getByRole('button', { name: 'Open image' }).click();
  } else {
    await page.evaluate(() => delete window.showOpenFilePicker);
    await page.locator('#open-image').setInputFiles(file);
  }
  mark('open');
  await page.getByRole('tab', { name: path.basename(source === 'handle' ? 'bench.qcow2' : file) }).waitFor();
  mark('opened');
  await page.getByRole('navigation', { name: 'Views' }).getByRole('link', { name: 'Snapshots', exact: true }).click();
  const bar = page.getByRole('group', { name: 'Unsaved changes' });
  /** ms from the last click to `cond` holding on the page. */
  const timed = async (cond, clicks) => {
    await page.evaluate(`window.__watch(${cond})`);
    mark('op');
    await clicks();
    await page.waitForFunction(() => window.__doneAt > 0, null, { polling: 10 });
    return page.evaluate(() => {
      window.__stopWatch();
      return window.__doneAt - window.__lastClick;
    });
  };
  // A handle: the save bar counts the changes. A File: the busy line came and went, no dialog left.
  const done = (n) => source === 'handle'
    ? `() => (document.querySelector('[aria-label="Unsaved changes"]')?.textContent ?? '').includes('${n} unsaved change')`
    : `(() => { let seen = false; return () => { if (document.querySelector('.busy')) seen = true; return seen && !document.querySelector('.busy') && !document.querySelector('dialog[open]'); }; })()`;
  // As a person would: the next click once the page is settled (the Snapshots view's "deleting all
  // snapshots frees" line counted, work of the worker that would otherwise delay the next operation).
  const counted = page.getByTestId('all-snapshots-space').filter({ hasNotText: 'Counting' });
  const settled = async () => {
    const t = Date.now();
    mark('settle');
    await counted.waitFor();
    mark('settled');
    return Date.now() - t;
  };
  r.settleMs = [await settled()];
  await page.getByRole('textbox', { name: 'Snapshot name' }).fill('b1');
  r.createMs = await timed(done(1), async () => {
    await page.getByRole('button', { name: 'Create snapshot' }).click();
    if (source === 'handle') await page.getByRole('button', { name: 'No VM is running: go on' }).click();
  });
  r.settleMs.push(await settled());
  r.revertMs = await timed(done(2), async () => {
    await page.getByRole('button', { name: 'Revert to s1' }).click();
    await page.getByRole('dialog').getByRole('button', { name: 'Confirm' }).click();
  });
  r.settleMs.push(await settled());
  r.deleteMs = await timed(done(3), async () => {
    await page.getByRole('button', { name: 'Delete s2' }).click();
    await page.getByRole('dialog').getByRole('button', { name: 'Confirm' }).click();
  });
  r.settleMs.push(await settled());
  const pend = mem.stop();
  if (!pend.found) throw new Error('the renderer of the page was not found (no new renderer process runs a dedicated worker)');
  r.pendingMiB = pend.peakMiB;
  r.startMiB = pend.startMiB;
  let alert = await page.getByRole('alert').textContent({ timeout: 100 }).catch(() => null);
  if (alert) throw new Error(`the app said: ${alert}`);
  if (meta && !SAVE_META) {
    // No save: it would write the whole logical size. Drop the changes (and their private files).
    if (source === 'handle') {
      await bar.getByRole('button', { name: 'Discard changes' }).click();
      await page.getByRole('dialog').getByRole('button', { name: 'Discard' }).click();
      await bar.waitFor({ state: 'detached' });
    }
    return r;
  }
  const saveMem = sampleRenderers(pids);
  const disk = meta ? diskUse(path.dirname(file)) : null;
  r.saveMs = await timed(`() => !document.querySelector('[aria-label="Unsaved changes"]')`, async () => {
    await bar.getByRole('button', { name: 'Save', exact: true }).click();
    // over 1 GiB the cost is said first (web/lib/saving.svelte.ts COSTLY_SAVE_BYTES): timed from its answer
    if (size > 2 ** 30) await page.getByRole('button', { name: 'Rewrite and save' }).click();
  });
  r.saveMiB = saveMem.stop().peakMiB;
  if (disk) r.diskMiB = disk.stop();
  alert = await page.getByRole('alert').textContent({ timeout: 100 }).catch(() => null);
  if (alert) throw new Error(`the app said: ${alert}`);
  // A metadata-preallocated image's copies would each write its whole logical size again.
  if (!meta) Object.assign(r, await copies(page));
  return r;
}

export function saveTable(b) {
  if (!b) return '';
  if (b.skipped || b.error) return `browser save: ${b.skipped ?? 'failed: ' + b.error}`;
  const s = (ms) => (ms === undefined ? '—' : (ms / 1000).toFixed(3));
  const m = (x) => (x === undefined ? '—' : x.toFixed(0));
  const lines = [`browser, a person's file through "Open image" (${b.chromium}; from the last click to the page updated; seconds; tab memory = peak resident set of the renderer, MiB):`,
    '| image | source | file | create | revert | delete | space line counted after (max) | tab memory before Open | tab memory, pending | save (3 ops) | tab memory, save | keepExistingData copy (before, after) | stream copy | save / copy |',
    '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|'];
  for (const r of b.results) {
    if (r.error) lines.push(`| ${r.size} | — | — | failed: ${r.error} |`);
    else {
      const keep = r.keepMs === undefined ? undefined : Math.min(r.keepMs, r.keepBeforeMs ?? Infinity);
      lines.push(`| ${r.size} | ${r.source} | ${(r.fileSize / 2 ** 20).toFixed(0)} MiB | ${s(r.createMs)} | ${s(r.revertMs)} | ${s(r.deleteMs)} | ${s(Math.max(...r.settleMs))} | ${m(r.startMiB)} | ${m(r.pendingMiB)} | ${s(r.saveMs)} | ${m(r.saveMiB)} | ${s(r.keepBeforeMs)}, ${s(r.keepMs)} | ${s(r.streamMs)} | ${keep ? (r.saveMs / keep).toFixed(2) : '—'} |`);
    }
  }
  for (const r of b.results) if (r.diskMiB !== undefined) lines.push(`${r.size}: the save took ${(r.diskMiB / 1024).toFixed(1)} GiB of free disk at most (file system free space, sampled each second)`);
  return lines.join('\n');
}
