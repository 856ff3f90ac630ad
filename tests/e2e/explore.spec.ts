// The explorer views on a qemu-made image, judged by QEMU: where a guest byte lives (Translation,
// and the L1 → L2 drill-down) against `qemu-img map`, and the snapshot table's space figures.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { qemuConvertToRaw, qemuMap } from '../helpers/qemu.ts';
import { test, expect, makeImage, openViaInput, showView } from './fixtures.ts';

const hex = (n: number) => '0x' + n.toString(16);

test('translation agrees with qemu-img map', async ({ page, tmp }) => {
  const f = makeImage(tmp, 'map.qcow2');
  const map = qemuMap(f.path);
  await page.goto('/');
  await openViaInput(page, f);
  await showView(page, 'Translation');
  const probes = [0, 0x10010, 0x20000 + 5, 0x30000, 0x100000, 64 * 1024 * 1024 - 1];
  for (const guest of probes) {
    const ext = map.find((e) => guest >= e.start && guest < e.start + e.length)!;
    await page.getByLabel('Guest offset').fill(hex(guest));
    await page.getByRole('button', { name: 'Translate', exact: true }).click();
    const answer = page.getByRole('status').filter({ hasText: `Guest ${hex(guest)}` });
    await expect(answer).toBeVisible();
    if (ext.data && ext.offset !== undefined) {
      await expect(answer).toContainText(`host offset ${hex(ext.offset + guest - ext.start)}`);
    } else {
      await expect(answer).not.toContainText('host offset');
    }
  }
});

test('L1 → L2 drill-down shows the host clusters qemu-img map reports', async ({ page, tmp }) => {
  const f = makeImage(tmp, 'tables.qcow2');
  const data = qemuMap(f.path).filter((e) => e.data && e.offset !== undefined);
  await page.goto('/');
  await openViaInput(page, f);
  await showView(page, 'L1 table');
  await page.getByRole('button', { name: /^L1 entry 0: L2 table at/ }).click();
  await expect(page.getByRole('heading', { name: /^L2 table at 0x/ })).toBeVisible();
  for (const e of data) {
    for (let g = e.start; g < e.start + e.length; g += 65536) {
      const i = g / 65536;
      await expect(page.getByRole('button', { name: `L2 entry ${i}: guest ${hex(g)}, data at ${hex(e.offset! + g - e.start)}` })).toBeVisible();
    }
  }
  // The inspector decodes the selected entry's bits.
  await page.getByRole('button', { name: /^L2 entry 0:/ }).click();
  const inspector = page.getByRole('complementary', { name: 'Inspector' });
  await expect(inspector.getByRole('heading', { name: 'L2 entry 0' })).toBeVisible();
  await expect(inspector).toContainText('COPIED (bit 63)');
});

test('refcount table → block lists the used clusters', async ({ page, tmp }) => {
  const f = makeImage(tmp, 'refs.qcow2');
  await page.goto('/');
  await openViaInput(page, f);
  await showView(page, 'Refcount table');
  await page.getByRole('button', { name: /^Refcount table entry 0: block at/ }).click();
  await expect(page.getByRole('heading', { name: /^Refcount block at 0x/ })).toBeVisible();
  // Cluster 0 (the header) is always used once.
  await expect(page.getByRole('button', { name: 'Cluster 0 at 0x0: refcount 1' })).toBeVisible();
  // The data written before both snapshots is shared: refcount 3 (active + snapA + snapB).
  await expect(page.getByRole('button', { name: /refcount 3$/ }).first()).toBeVisible();
});

test('a snapshot shows what it holds alone', async ({ page, tmp }) => {
  const f = makeImage(tmp, 'space.qcow2');
  await page.goto('/');
  await openViaInput(page, f);
  await showView(page, 'Snapshots');
  await page.getByRole('table', { name: 'Snapshots' }).getByRole('cell', { name: 'snapA', exact: true }).click();
  const inspector = page.getByRole('complementary', { name: 'Inspector' });
  await expect(inspector.getByRole('heading', { name: 'Snapshot snapA' })).toBeVisible();
  await expect(inspector).toContainText('deleting it frees them');

  // What changed since snapA: the guest clusters whose content differs, as qemu-img convert shows.
  const active = path.join(tmp, 'active.raw');
  const snapA = path.join(tmp, 'snapA.raw');
  qemuConvertToRaw(f.path, active);
  qemuConvertToRaw(f.path, snapA, { name: 'snapA' });
  const x = fs.readFileSync(active);
  const y = fs.readFileSync(snapA);
  let changed = 0;
  for (let c = 0; c < x.length / 65536; c++) if (!x.subarray(c * 65536, (c + 1) * 65536).equals(y.subarray(c * 65536, (c + 1) * 65536))) changed++;
  expect(changed).toBeGreaterThan(0);
  await expect(inspector).toContainText(`${changed} guest clusters differ from the active disk`);
});

test('hex view shows a selected header field’s bytes, as they are in the file', async ({ page, tmp }) => {
  const f = makeImage(tmp, 'hex.qcow2');
  const head = fs.readFileSync(f.path).subarray(40, 48); // l1_table_offset, big-endian
  await page.goto('/');
  await openViaInput(page, f);
  await page.getByRole('button', { name: 'l1_table_offset' }).click();
  await page.getByRole('complementary', { name: 'Inspector' }).getByRole('button', { name: 'Show in hex' }).click();
  await expect(page.getByRole('heading', { name: 'Hex', exact: true })).toBeVisible();
  const selectedBytes = page.locator('.b.sel');
  await expect(selectedBytes).toHaveCount(8);
  expect((await selectedBytes.allInnerTexts()).join('')).toBe(head.toString('hex'));
});

test('hex view: a typed offset shows its cluster; text that is no offset, or one past the end, says so', async ({ page, tmp }) => {
  const f = makeImage(tmp, 'hexoff.qcow2');
  const size = fs.statSync(f.path).size;
  const cluster = 3;
  const want = fs.readFileSync(f.path).subarray(cluster * 65536, cluster * 65536 + 16);
  await page.goto('/');
  await openViaInput(page, f);
  await showView(page, 'Hex');
  const box = page.getByRole('textbox', { name: 'Host offset' });
  await box.fill(`0x${(cluster * 65536 + 5).toString(16)}`);
  await expect(page.getByRole('table', { name: `Bytes of cluster ${cluster}` })).toBeVisible();
  const firstRow = page.getByRole('table', { name: `Bytes of cluster ${cluster}` }).getByRole('row').first();
  for (const b of want.subarray(0, 4)) await expect(firstRow).toContainText(b.toString(16).padStart(2, '0'));
  await expect(box).toHaveAttribute('aria-invalid', 'false');
  await box.fill('12zz');
  await expect(page.getByRole('alert')).toContainText('Host offset: “12zz” is not a number of bytes.');
  await expect(box).toHaveAttribute('aria-invalid', 'true');
  await box.fill(String(size));
  await expect(page.getByRole('alert')).toContainText(`${size} is past the end of the file`);
  await box.fill('');
  await expect(page.getByRole('alert')).toHaveCount(0);
});
