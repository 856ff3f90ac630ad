// Shared pieces of the end-to-end tests: images made with qemu-img at test time in the OS temp
// dir (Playwright empties its own output folder), a page fixture that records every request, and
// ways to hand an image to the app (file input, synthetic drop, a stubbed picker returning a real
// OPFS handle, docs/platform.md).
import { test as base, expect, type Download, type Page } from '@playwright/test';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createImage, makeTempDir, qemuImgOk, qemuIoOk, removeDir, type CreateOptions } from '../helpers/qemu.ts';

export { expect };

export interface Fixture {
  path: string;
  name: string;
}

/**
 * A 64 MiB image with data in two clusters and snapshots snapA and snapB (made by QEMU). Each
 * variety is made once per worker process and copied into `dir` from then on.
 */
export function makeImage(dir: string, name = 'disk.qcow2', opts: CreateOptions = {}, snapshots = ['snapA', 'snapB']): Fixture {
  const key = JSON.stringify([opts, snapshots]);
  let made = madeImages.get(key);
  if (made === undefined) {
    madeDir ??= makeTempDir('qcowscope-e2e-images-');
    made = path.join(madeDir, `${madeImages.size}.qcow2`);
    createImage(made, '64M', opts);
    qemuIoOk(made, 'write -P 0xab 0 128k');
    snapshots.forEach((s, i) => {
      qemuImgOk(['snapshot', '-c', s, made!]);
      qemuIoOk(made!, `write -P 0x${(0xc0 + i).toString(16)} ${64 * (i + 1)}k 64k`);
    });
    madeImages.set(key, made);
  }
  const file = path.join(dir, name);
  fs.copyFileSync(made, file, fs.constants.COPYFILE_FICLONE);
  return { path: file, name };
}

const madeImages = new Map<string, string>();
let madeDir: string | undefined;
process.once('exit', () => {
  if (madeDir !== undefined) removeDir(madeDir);
});

type Fixtures = {
  tmp: string;
  /** Every URL the page requested, for the "no foreign request" checks. */
  requests: string[];
};

export const test = base.extend<Fixtures>({
  tmp: async ({}, use) => {
    const dir = makeTempDir('qcowscope-e2e-');
    await use(dir);
    removeDir(dir);
  },
  requests: async ({ page }, use) => {
    const urls: string[] = [];
    page.on('request', (r) => urls.push(r.url()));
    await use(urls);
  },
});

/** Open through the always-present "Image file" input. */
export async function openViaInput(page: Page, f: Fixture): Promise<void> {
  await page.getByLabel('Image file').setInputFiles(f.path);
  await expect(page.getByRole('tab', { name: f.name })).toBeVisible();
}

/** Open by a synthetic drop on the page (a DataTransfer holding a File, as a real drop gives). */
export async function openViaDrop(page: Page, f: Fixture): Promise<void> {
  const b64 = fs.readFileSync(f.path).toString('base64');
  const dt = await page.evaluateHandle(
    ({ b64, name }) => {
      const bin = atob(b64);
      const bytes = new Uint8Array(bin.length);
      for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
      const d = new DataTransfer();
      d.items.add(new File([bytes], name, { type: 'application/octet-stream' }));
      return d;
    },
    { b64, name: f.name },
  );
  for (const type of ['dragenter', 'dragover', 'drop']) {
    await page.dispatchEvent('main', type, { dataTransfer: dt });
  }
  await expect(page.getByRole('tab', { name: f.name })).toBeVisible();
}

/**
 * Make `window.showOpenFilePicker` return a real handle: the fixture is copied into the origin
 * private file system and the stub hands out its handle (Playwright cannot drive the real picker).
 */
export async function installPickerStub(page: Page): Promise<void> {
  await page.addInitScript(() => {
    (window as unknown as { showOpenFilePicker: () => Promise<FileSystemFileHandle[]> }).showOpenFilePicker = async () => {
      const name = localStorage.getItem('e2e-picker-file');
      if (!name) throw new DOMException('No file staged', 'AbortError');
      const root = await navigator.storage.getDirectory();
      return [await root.getFileHandle(name)];
    };
  });
}

/**
 * Put a fixture into OPFS under its name and make the stubbed picker return it. The file reaches
 * the page through a file input (Playwright hands Chromium the path) and is written as one Blob,
 * so a large image never passes through the test as text.
 */
export async function stageInOpfs(page: Page, f: Fixture): Promise<void> {
  await page.evaluate(() => {
    const input = document.createElement('input');
    input.type = 'file';
    input.id = 'e2e-stage';
    input.hidden = true;
    document.body.append(input);
  });
  await page.setInputFiles('#e2e-stage', f.path);
  await page.evaluate(async (name) => {
    const input = document.getElementById('e2e-stage') as HTMLInputElement;
    const root = await navigator.storage.getDirectory();
    const h = await root.getFileHandle(name, { create: true });
    const w = await h.createWritable();
    await w.write(input.files![0]!);
    await w.close();
    input.remove();
    localStorage.setItem('e2e-picker-file', name);
  }, f.name);
}

/** SHA-256 (hex) of a file in OPFS, computed in the page (compare with `sha256` of a file on disk). */
export async function opfsSha256(page: Page, name: string): Promise<string> {
  return page.evaluate(async (name) => {
    const root = await navigator.storage.getDirectory();
    const file = await (await root.getFileHandle(name)).getFile();
    const d = new Uint8Array(await crypto.subtle.digest('SHA-256', await file.arrayBuffer()));
    return Array.from(d, (b) => b.toString(16).padStart(2, '0')).join('');
  }, name);
}

/** Open a fixture staged in OPFS through "Open image" (the stubbed picker). */
export async function openViaPicker(page: Page, f: Fixture): Promise<void> {
  await stageInOpfs(page, f);
  await page.getByRole('button', { name: 'Open image' }).click();
  await expect(page.getByRole('tab', { name: f.name })).toBeVisible();
}

/** Read a file back out of OPFS (to judge what a write through a handle did, with qemu-img), as a download. */
export async function readFromOpfs(page: Page, name: string, to: string): Promise<void> {
  await (await downloadFromOpfs(page, name)).saveAs(to);
}

/** A file of the page's private file system, downloaded (read it at download.path(); no copy). */
export async function downloadFromOpfs(page: Page, name: string): Promise<Download> {
  const d = page.waitForEvent('download');
  await page.evaluate(async (name) => {
    const root = await navigator.storage.getDirectory();
    const file = await (await root.getFileHandle(name)).getFile();
    const a = document.createElement('a');
    a.href = URL.createObjectURL(file);
    a.download = name;
    document.body.append(a);
    a.click();
    a.remove();
  }, name);
  return d;
}

/** "Download image" of the shown tab (or of `tab`, shown first), saved to `to`; returns `to`. */
export async function downloadImage(page: Page, to: string, tab?: string): Promise<string> {
  if (tab !== undefined) await page.getByRole('tab', { name: tab }).click();
  const d = page.waitForEvent('download');
  await page.getByRole('button', { name: 'Download image' }).click();
  await (await d).saveAs(to);
  return to;
}

/** Show a view through the rail. */
export async function showView(page: Page, name: string): Promise<void> {
  await page.getByRole('navigation', { name: 'Views' }).getByRole('link', { name, exact: true }).click();
  await expect(page.getByRole('heading', { name, exact: true, level: 2 })).toBeVisible();
}

/** Open images (through `open`, e.g. openViaInput) and take them as one group in the Snapshots view. */
export async function openGroup(page: Page, open: (page: Page, f: Fixture) => Promise<void>, ...images: Fixture[]): Promise<void> {
  for (const f of images) await open(page, f);
  await showView(page, 'Snapshots');
  await page.getByRole('checkbox', { name: new RegExp(`Apply to all ${images.length} open images as one group`) }).check();
}

/** Requests that left the app's own origin (blob: and data: URLs stay on the machine). */
export function foreign(requests: string[], baseURL: string): string[] {
  const origin = new URL(baseURL).origin;
  return requests.filter((u) => !u.startsWith('blob:') && !u.startsWith('data:') && new URL(u).origin !== origin);
}
