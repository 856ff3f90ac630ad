// External snapshots from the UI: a new overlay per image (one image or the group), saved as
// downloads or into a chosen folder, all or none; the overlay opens over its original so reads
// fall through. QEMU judges the saved chain: `info --backing-chain`, `check`, and `convert`
// reading the same bytes through the overlay as from the original.
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Download, Page } from '@playwright/test';
import { qemuCheck, qemuConvertToRaw, qemuImgOk, sha256 } from '../helpers/qemu.ts';
import { test, expect, makeImage, openGroup, openViaInput, readFromOpfs, showView } from './fixtures.ts';

interface ChainEntry {
  filename: string;
  'backing-filename'?: string;
  'backing-filename-format'?: string;
  'virtual-size': number;
}

/** QEMU's view of an overlay saved next to its original: the chain, a clean check, the same guest bytes. */
function expectChain(dir: string, overlay: string, original: string, tmp: string): void {
  const chain = JSON.parse(qemuImgOk(['info', '--backing-chain', '--output=json', path.join(dir, overlay)])) as ChainEntry[];
  expect(chain).toHaveLength(2);
  expect(chain[0]!['backing-filename']).toBe(original); // relative: the original's file name
  expect(chain[0]!['backing-filename-format']).toBe('qcow2');
  expect(path.basename(chain[1]!.filename)).toBe(original);
  expect(chain[0]!['virtual-size']).toBe(chain[1]!['virtual-size']);
  expect(qemuCheck(path.join(dir, overlay)).exitCode).toBe(0);
  const viaOverlay = path.join(tmp, `${overlay}.raw`);
  const viaOriginal = path.join(tmp, `${original}.raw`);
  qemuConvertToRaw(path.join(dir, overlay), viaOverlay);
  qemuConvertToRaw(path.join(dir, original), viaOriginal);
  expect(sha256(viaOverlay)).toBe(sha256(viaOriginal));
}

/** Collect the next `n` downloads. */
function downloads(page: Page, n: number): Promise<Download[]> {
  return new Promise((resolve) => {
    const got: Download[] = [];
    const on = (d: Download) => {
      got.push(d);
      if (got.length === n) {
        page.off('download', on);
        resolve(got);
      }
    };
    page.on('download', on);
  });
}

test('external snapshot of two images as a group: overlays downloaded, chains read like the originals', async ({ page, tmp }) => {
  const sys = makeImage(tmp, 'sys.qcow2', {}, ['base']);
  const data = makeImage(tmp, 'data.qcow2', { clusterSize: 4096 }, []);
  await page.goto('/');
  await openGroup(page, openViaInput, sys, data);
  await page.getByRole('textbox', { name: 'Overlay suffix' }).fill('-ext');
  await expect(page.getByText('→ sys-ext.qcow2, data-ext.qcow2')).toBeVisible();
  const radio = page.getByRole('radio', { name: 'As downloads' });
  if (await radio.count()) await radio.check();
  const got = downloads(page, 2);
  await page.getByRole('button', { name: 'Take an external snapshot' }).click();
  const saved = await got;
  // Pristine files are on disk already: only the overlays are offered.
  expect(saved.map((d) => d.suggestedFilename()).sort()).toEqual(['data-ext.qcow2', 'sys-ext.qcow2']);
  await expect(page.getByRole('status').filter({ hasText: 'External snapshot taken' })).toBeVisible();

  const out = path.join(tmp, 'chain');
  fs.mkdirSync(out);
  for (const d of saved) await d.saveAs(path.join(out, d.suggestedFilename()));
  for (const f of [sys, data]) fs.copyFileSync(f.path, path.join(out, f.name));
  expectChain(out, 'sys-ext.qcow2', 'sys.qcow2', tmp);
  expectChain(out, 'data-ext.qcow2', 'data.qcow2', tmp);

  // Both overlays are open, over their originals: the browser reads the original's bytes through
  // them, and the originals are read-only while they are backing files.
  await expect(page.getByRole('tab', { name: 'sys-ext.qcow2' })).toBeVisible();
  await page.getByRole('tab', { name: 'sys-ext.qcow2' }).click();
  await showView(page, 'Snapshots');
  const raw = page.waitForEvent('download');
  await page.getByRole('button', { name: 'Export the active disk as raw' }).click();
  const rawPath = path.join(tmp, 'sys-ext-browser.raw');
  await (await raw).saveAs(rawPath);
  expect(sha256(rawPath)).toBe(sha256(path.join(tmp, 'sys.qcow2.raw')));

  await page.getByRole('tab', { name: 'sys.qcow2', exact: true }).click();
  await expect(page.getByText('It is the backing file of sys-ext.qcow2').first()).toBeVisible();
  await expect(page.getByRole('button', { name: 'Revert to base' })).toBeDisabled();
  // Closing the overlay makes the original writable again.
  await page.getByRole('button', { name: 'Close sys-ext.qcow2' }).click();
  await page.getByRole('tab', { name: 'sys.qcow2', exact: true }).click();
  await showView(page, 'Snapshots');
  // The group choice stays on (it is the window's): data.qcow2 is still a backing file, so the
  // group cannot be written; sys.qcow2 alone can.
  const group = page.getByRole('checkbox', { name: /Apply to all 3 open images as one group/ });
  await expect(group).toBeChecked();
  await expect(page.getByRole('button', { name: 'Revert to base' })).toBeDisabled();
  await expect(page.getByText('The group cannot change: data.qcow2 is read-only')).toBeVisible();
  await group.uncheck();
  await expect(page.getByRole('button', { name: 'Revert to base' })).toBeEnabled();
});

test('external snapshot into a chosen folder: all or none, the in-memory original saved with it', async ({ page, tmp }) => {
  // The folder picker cannot be driven headless: it hands out the origin private file system's root.
  await page.addInitScript(() => {
    (window as unknown as { showDirectoryPicker: () => Promise<FileSystemDirectoryHandle> }).showDirectoryPicker = () => navigator.storage.getDirectory();
  });
  await page.goto('/');
  const listOpfs = () => page.evaluate(async () => {
    const names: string[] = [];
    for await (const k of (await navigator.storage.getDirectory() as unknown as { keys(): AsyncIterable<string> }).keys()) names.push(k);
    return names.sort();
  });
  // A file already holds the overlay's name: nothing is saved, no tab opens.
  await page.evaluate(async () => {
    const h = await (await navigator.storage.getDirectory()).getFileHandle('demo-snap.qcow2', { create: true });
    const w = await h.createWritable();
    await w.write('not mine to replace');
    await w.close();
  });
  await page.getByRole('button', { name: 'Try the demo image' }).click();
  await expect(page.getByRole('tab', { name: 'demo.qcow2' })).toBeVisible();
  await showView(page, 'Snapshots');
  await page.getByRole('textbox', { name: 'Overlay suffix' }).fill('-snap');
  await page.getByRole('radio', { name: 'In a folder I choose' }).check();
  await page.getByRole('button', { name: 'Take an external snapshot' }).click();
  await expect(page.getByRole('alert')).toContainText('demo-snap.qcow2 already exists');
  expect(await listOpfs()).toEqual(['demo-snap.qcow2']);
  await expect(page.getByRole('tab')).toHaveCount(1);

  await page.evaluate(async () => (await navigator.storage.getDirectory()).removeEntry('demo-snap.qcow2'));
  await page.getByRole('button', { name: 'Take an external snapshot' }).click();
  await expect(page.getByRole('tab', { name: 'demo-snap.qcow2' })).toBeVisible();
  // The demo lives in memory only: it is saved too, under the name the overlay gives it.
  expect(await listOpfs()).toEqual(['demo-snap.qcow2', 'demo.qcow2']);
  const out = path.join(tmp, 'chain');
  fs.mkdirSync(out);
  await readFromOpfs(page, 'demo-snap.qcow2', path.join(out, 'demo-snap.qcow2'));
  await readFromOpfs(page, 'demo.qcow2', path.join(out, 'demo.qcow2'));
  expect(qemuCheck(path.join(out, 'demo.qcow2')).exitCode).toBe(0);
  expectChain(out, 'demo-snap.qcow2', 'demo.qcow2', tmp);
  // The overlay tab is the saved file itself (changes to it wait for Save).
  await expect(page.getByText('Your file: changes wait here until you Save')).toBeVisible();
});
