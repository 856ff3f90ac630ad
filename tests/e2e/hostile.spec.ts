// Hostile images in the browser (the corruptor's named damages): the open error is one readable
// line naming the structure and its offset, shown next to that structure; the tab never crashes
// or hangs, and what can be read stays explorable (read-only). Offsets are read from the damaged
// files themselves; qemu-img confirms that QEMU refuses each image too.
import * as path from 'node:path';
import type { Page } from '@playwright/test';
import { makeDamagedImage } from '../helpers/corruptor.ts';
import { peekU32, peekU64, qemuImg } from '../helpers/qemu.ts';
import { test, expect, openViaInput, showView } from './fixtures.ts';

const hex = (n: number | bigint) => '0x' + n.toString(16);

async function openDamaged(page: Page, tmp: string, damage: string): Promise<string> {
  const file = path.join(tmp, `${damage}.qcow2`);
  const d = makeDamagedImage(damage, file);
  // QEMU refuses to open it too, with the message the app repeats.
  const info = qemuImg(['info', file]);
  expect(info.status).not.toBe(0);
  expect(info.stderr).toContain(d.expect.openError!);
  await openViaInput(page, { path: file, name: `${damage}.qcow2` });
  await expect(page.getByRole('alert')).toContainText(`${damage}.qcow2 failed validation: ${d.expect.openError}`);
  await expect(page.getByText('Read-only', { exact: true })).toBeVisible();
  return file;
}

const note = (page: Page) => page.getByRole('note', { name: 'Validation error' });

test('a snapshot table too large: Snapshots says so, Header and L1 stay explorable', async ({ page, tmp }) => {
  await page.goto('/');
  const file = await openDamaged(page, tmp, 'nb-snapshots-huge');
  const snapshotsOffset = hex(peekU64(file, 64));
  await expect(page.getByRole('alert')).toContainText(`Snapshot table at byte ${snapshotsOffset}, header field at byte 0x40`);
  // The error sits on the Snapshots view, above the (empty) table.
  await expect(page.getByRole('heading', { name: 'Snapshots', level: 2 })).toBeVisible();
  await expect(note(page)).toContainText('Snapshot table too large');
  await expect(note(page)).toContainText(snapshotsOffset);
  await expect(page.getByRole('button', { name: 'Create snapshot' })).toBeDisabled();

  await showView(page, 'Header');
  const field = (name: string) => page.getByRole('row').filter({ has: page.getByRole('button', { name, exact: true }) });
  await expect(field('nb_snapshots')).toContainText(peekU32(file, 60).toLocaleString('en-US'));
  await expect(field('snapshots_offset')).toContainText('Snapshot table too large');
  // The active L1 table reads as before: its first entry points where the file says.
  const l2 = peekU64(file, Number(peekU64(file, 40))) & 0x00fffffffffffe00n;
  await showView(page, 'L1 table');
  await expect(page.getByRole('list', { name: 'L1 entries' }).getByRole('button', { name: `L1 entry 0: L2 table at ${hex(l2)}` })).toBeVisible();
});

test('an unaligned L1 table offset: Header marks the field, L1 explains, Hex still reads', async ({ page, tmp }) => {
  await page.goto('/');
  const file = await openDamaged(page, tmp, 'l1-offset-unaligned');
  const l1 = hex(peekU64(file, 40));
  await expect(page.getByRole('alert')).toContainText(`Active L1 table at byte ${l1}, header field at byte 0x28`);
  await showView(page, 'Header');
  const row = page.getByRole('row').filter({ has: page.getByRole('button', { name: 'l1_table_offset', exact: true }) });
  await expect(row).toContainText('Active L1 table offset invalid');
  await showView(page, 'L1 table');
  await expect(note(page)).toContainText(`Active L1 table offset invalid (Active L1 table at byte ${l1}`);
  await expect(note(page)).toContainText('needs the image\'s tables');
  await showView(page, 'Hex');
  await expect(page.getByRole('table', { name: 'Bytes of cluster 0' })).toContainText('514649fb');
  // The check fails as qemu-img check does, in the message bar; the tab goes on.
  await page.getByRole('button', { name: 'Run check' }).click();
  await expect(page.getByRole('alert')).toContainText('Active L1 table offset invalid');
  await showView(page, 'Header');
});

test('a header extension too large: the header fields as stored, the tab still usable', async ({ page, tmp }) => {
  await page.goto('/');
  const file = await openDamaged(page, tmp, 'header-extension-too-large');
  await expect(page.getByRole('alert')).toContainText(`header extension at byte ${hex(peekU32(file, 100))}`);
  await expect(page.getByRole('heading', { name: 'Header', level: 2 })).toBeVisible();
  await expect(note(page)).toContainText('Header extension too large');
  const magic = page.getByRole('row').filter({ has: page.getByRole('button', { name: 'magic', exact: true }) });
  await expect(magic).toContainText('0x514649fb');
  const size = page.getByRole('row').filter({ has: page.getByRole('button', { name: 'size', exact: true }) });
  await expect(size).toContainText(Number(peekU64(file, 24)).toLocaleString('en-US'));
  await showView(page, 'Cluster map');
  await expect(note(page)).toContainText('Header extension too large');
  // Nothing hangs: another image opens and works next to it.
  await page.getByRole('button', { name: 'Try the demo image' }).click();
  await expect(page.getByRole('tab', { name: 'demo.qcow2' })).toBeVisible();
  await showView(page, 'Snapshots');
  await expect(page.getByRole('table', { name: 'Snapshots' }).getByRole('cell', { name: 'installed', exact: true })).toBeVisible();
});
