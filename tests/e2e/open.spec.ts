// Every way to open an image: the "Image file" input, a drop anywhere on the page, and the
// "Open image" picker (stubbed with a real OPFS handle). What the app shows is judged against
// `qemu-img info --output=json` on the same file.
import type { Page } from '@playwright/test';
import { qemuConvertToRaw, qemuImgCreateEncrypted, qemuInfo, qemuIoOk, sha256, type QemuInfo } from '../helpers/qemu.ts';
import { test, expect, foreign, installPickerStub, makeImage, openViaDrop, openViaInput, showView, stageInOpfs } from './fixtures.ts';

/** The header summary agrees with qemu-img info, field by field (qemu-img's JSON names). */
async function expectHeaderMatches(page: Page, info: QemuInfo): Promise<void> {
  await showView(page, 'Header');
  const field = (name: string) => page.locator(`[data-field="${name}"]`);
  const num = async (name: string) => Number((await field(name).innerText()).replace(/[^0-9]/g, ''));
  expect(await num('virtual-size')).toBe(info['virtual-size']);
  expect(await num('cluster-size')).toBe(info['cluster-size']);
  const d = info['format-specific']!.data;
  await expect(field('compat')).toHaveText(d.compat);
  expect(await num('refcount-bits')).toBe(d['refcount-bits']);
  if (d['compression-type'] !== undefined) await expect(field('compression-type')).toHaveText(d['compression-type']);
  if (d['lazy-refcounts'] !== undefined) await expect(field('lazy-refcounts')).toHaveText(String(d['lazy-refcounts']));
  if (d.corrupt !== undefined) await expect(field('corrupt')).toHaveText(String(d.corrupt));
  if (d['extended-l2'] !== undefined) await expect(field('extended-l2')).toHaveText(String(d['extended-l2']));
  expect(await num('nb-snapshots')).toBe(info.snapshots?.length ?? 0);
  if (info['backing-filename'] !== undefined) await expect(field('backing-filename')).toHaveText(info['backing-filename']);
}

/** The Snapshots table lists what qemu-img lists: ID and tag, row by row. */
async function expectSnapshotsMatch(page: Page, info: QemuInfo): Promise<void> {
  await showView(page, 'Snapshots');
  const table = page.getByRole('table', { name: 'Snapshots' });
  const rows = table.locator('tbody tr');
  const snaps = info.snapshots ?? [];
  await expect(rows).toHaveCount(snaps.length);
  for (let i = 0; i < snaps.length; i++) {
    const cells = rows.nth(i).getByRole('cell');
    await expect(cells.nth(0)).toHaveText(snaps[i]!.id);
    await expect(cells.nth(1)).toHaveText(snaps[i]!.name);
    await expect(rows.nth(i).getByRole('button', { name: `Revert to ${snaps[i]!.name}` })).toBeVisible();
    await expect(rows.nth(i).getByRole('button', { name: `Delete ${snaps[i]!.name}` })).toBeVisible();
  }
}

test('opens an image through the "Image file" input', async ({ page, tmp, requests, baseURL }) => {
  const f = makeImage(tmp);
  await page.goto('/');
  await expect(page.getByRole('tab', { name: 'demo.qcow2' })).toBeVisible(); // opened on start
  await openViaInput(page, f);
  // the untouched start demo gives way to the person's own image
  await expect(page.getByRole('tab')).toHaveCount(1);
  const info = qemuInfo(f.path);
  await expectHeaderMatches(page, info);
  await expectSnapshotsMatch(page, info);
  await expect(page.getByRole('button', { name: 'Download image' })).toBeVisible();
  expect(foreign(requests, baseURL!)).toEqual([]);
});

test('opens an image dropped anywhere on the page', async ({ page, tmp }) => {
  const f = makeImage(tmp, 'dropped.qcow2');
  await page.goto('/');
  await openViaDrop(page, f);
  const info = qemuInfo(f.path);
  await expectHeaderMatches(page, info);
  await expectSnapshotsMatch(page, info);
});

test('opens an image through the "Open image" picker (a real OPFS handle)', async ({ page, tmp }) => {
  const f = makeImage(tmp, 'picked.qcow2');
  await installPickerStub(page);
  await page.goto('/');
  await stageInOpfs(page, f);
  await page.getByRole('button', { name: 'Open image' }).click();
  await expect(page.getByRole('tab', { name: f.name })).toBeVisible();
  const info = qemuInfo(f.path);
  await expectHeaderMatches(page, info);
  await expectSnapshotsMatch(page, info);
  // Opened with a writable handle, changes wait in the tab for Save: no download button.
  await expect(page.getByRole('button', { name: 'Download image' })).toHaveCount(0);
  await expect(page.getByText('Your file: changes wait here until you Save')).toBeVisible();
});

const VARIANTS: { name: string; opts: Parameters<typeof makeImage>[2] }[] = [
  { name: 'compat 0.10 (version 2)', opts: { compat: '0.10' } },
  { name: '4 KiB clusters, 1-bit refcounts', opts: { clusterSize: 4096, refcountBits: 1 } },
  { name: 'lazy refcounts, 64-bit refcounts', opts: { lazyRefcounts: true, refcountBits: 64 } },
  { name: 'extended L2, 128 KiB clusters', opts: { extendedL2: true, clusterSize: 131072 } },
  { name: 'zstd compression type', opts: { compressionType: 'zstd' } },
];

for (const v of VARIANTS) {
  test(`header matches qemu-img info: ${v.name}`, async ({ page, tmp }) => {
    const f = makeImage(tmp, 'variant.qcow2', v.opts, v.opts?.refcountBits === 1 ? [] : ['one']);
    await page.goto('/');
    await openViaInput(page, f);
    await expectHeaderMatches(page, qemuInfo(f.path));
  });
}

/** "Export the active disk as raw" gives what qemu-img convert reads from `image` (backing chain included). */
async function expectActiveExportAsQemu(page: Page, tmp: string, image: string): Promise<void> {
  await showView(page, 'Snapshots');
  const d = page.waitForEvent('download');
  await page.getByRole('button', { name: 'Export the active disk as raw' }).click();
  const ours = `${tmp}/ours.raw`;
  await (await d).saveAs(ours);
  const theirs = `${tmp}/theirs.raw`;
  qemuConvertToRaw(image, theirs);
  expect(sha256(ours)).toBe(sha256(theirs));
}

test('shows the backing file of an overlay, and opens it when asked', async ({ page, tmp }) => {
  const base = makeImage(tmp, 'base.qcow2', {}, []);
  const overlay = makeImage(tmp, 'overlay.qcow2', { backing: base.path }, []);
  // The overlay holds only what was written to it; the rest comes from the base.
  qemuIoOk(overlay.path, 'write -P 0x77 1M 64k');
  await page.goto('/');
  await openViaInput(page, overlay);
  await expectHeaderMatches(page, qemuInfo(overlay.path));
  await expect(page.getByRole('note')).toContainText('which is not open');
  await page.getByLabel('Backing file').setInputFiles(base.path);
  await expect(page.getByRole('note')).toContainText('base.qcow2, opened as its backing file');
  // With the backing file open, the raw export is the whole disk, as qemu-img convert reads it.
  await expectActiveExportAsQemu(page, tmp, overlay.path);
});

test('a backing chain of two qcow2 files: a missing link is named, the whole chain reads as QEMU reads it', async ({ page, tmp }) => {
  const base = makeImage(tmp, 'base.qcow2', {}, []);
  const mid = makeImage(tmp, 'mid.qcow2', { backing: base.path }, []);
  const top = makeImage(tmp, 'top.qcow2', { backing: mid.path }, []);
  qemuIoOk(mid.path, 'write -P 0x66 2M 64k');
  qemuIoOk(top.path, 'write -P 0x77 1M 64k');
  await page.goto('/');
  await openViaInput(page, top);
  // only the direct backing file: its own backing file is missing, and named
  await page.getByLabel('Backing file').setInputFiles(mid.path);
  await expect(page.getByRole('alert')).toContainText('base.qcow2');
  await expect(page.getByRole('note')).toContainText('which is not open');
  // the whole chain, in any order
  await page.getByLabel('Backing file').setInputFiles([base.path, mid.path]);
  await expect(page.getByRole('note')).toContainText('mid.qcow2 (through base.qcow2), opened as its backing file');
  await expectActiveExportAsQemu(page, tmp, top.path);
});

test('a LUKS-encrypted image opens without its key; the Header names the encryption as qemu-img info does', async ({ page, tmp }) => {
  const file = `${tmp}/luks.qcow2`;
  qemuImgCreateEncrypted(['-q', '-f', 'qcow2', '--object', 'secret,id=s0,data=k', '-o', 'encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10', file, '16M']);
  const enc = (qemuInfo(file) as unknown as { 'format-specific': { data: { encrypt: Record<string, unknown> & { slots: { active: boolean }[] } } } })['format-specific'].data.encrypt;
  await page.goto('/');
  await openViaInput(page, { path: file, name: 'luks.qcow2' });
  const shown = page.locator('[data-field="encrypt"]');
  await expect(shown).toContainText(`luks: ${String(enc['cipher-alg'])} ${String(enc['cipher-mode'])}-${String(enc['ivgen-alg'])}, ${String(enc['hash-alg'])}`);
  await expect(shown).toContainText(`key slots in use ${enc.slots.filter((x) => x.active).length} of ${enc.slots.length}`);
});

test('a file that is not qcow2 is refused with a clear message', async ({ page, tmp }) => {
  const fs = await import('node:fs');
  const p = `${tmp}/notes.txt`;
  fs.writeFileSync(p, 'hello, this is not a disk image\n'.repeat(10));
  await page.goto('/');
  await page.getByLabel('Image file').setInputFiles(p);
  await expect(page.getByRole('alert')).toContainText('notes.txt: not a qcow2 image');
  await expect(page.getByRole('alert')).toContainText('NOT_QCOW2');
});

test('several images open as tabs; closing one shows the other', async ({ page, tmp }) => {
  const a = makeImage(tmp, 'a.qcow2');
  const b = makeImage(tmp, 'b.qcow2', {}, ['only']);
  await page.goto('/');
  await openViaInput(page, a);
  await openViaInput(page, b);
  await expect(page.getByRole('tab', { name: 'b.qcow2' })).toHaveAttribute('aria-selected', 'true');
  await page.getByRole('button', { name: 'Close b.qcow2' }).click();
  await expect(page.getByRole('tab', { name: 'a.qcow2' })).toHaveAttribute('aria-selected', 'true');
  await expectSnapshotsMatch(page, qemuInfo(a.path));
});
