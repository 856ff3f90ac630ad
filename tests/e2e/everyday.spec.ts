// Everyday use (issue 18), one test per rough edge a new user met: group mode that stays put, a
// first visit that explains itself, errors that name the file, one size parser, focus back to the
// opener, a phone layout that leaves room, and a cluster inspector that says who uses a cluster.
// Images are made by qemu-img; QEMU judges what the page wrote.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createImage, qemuCheck, qemuGuestRangesByCluster, qemuImg, qemuImgOk, qemuInfo, qemuIoOk, qemuMap, peekU64, verifyPattern } from '../helpers/qemu.ts';
import { test, expect, downloadImage, makeImage, openViaInput, showView } from './fixtures.ts';

const snapshotNames = (file: string) => (qemuInfo(file).snapshots ?? []).map((s) => s.name);

test('1. group mode stays on across tab switches and its confirmation lists every image', async ({ page, tmp }) => {
  const a = makeImage(tmp, 'sys.qcow2', {}, ['base', 'old']);
  const b = makeImage(tmp, 'data.qcow2', {}, ['base', 'old']);
  await page.goto('/');
  await openViaInput(page, a);
  await openViaInput(page, b);
  await showView(page, 'Snapshots');
  const groupBox = page.getByRole('checkbox', { name: /Apply to all 2 open images as one group/ });
  const banner = page.getByRole('banner');
  await expect(banner.getByRole('status').filter({ hasText: /^Group/ })).toHaveCount(0);
  await groupBox.check();
  // The top bar says so, whatever view and tab are shown.
  const groupStatus = banner.getByRole('status').filter({ hasText: 'Group: 2 images' });
  await expect(groupStatus).toBeVisible();

  // Another image's tab, and another view and back: the choice is still there, and still on.
  await page.getByRole('tab', { name: 'sys.qcow2' }).click();
  await expect(groupBox).toBeChecked();
  await showView(page, 'Header');
  await expect(groupStatus).toBeVisible();
  // The indicator leads back to where the choice is made.
  await groupStatus.getByRole('button', { name: 'Group: 2 images' }).click();
  await expect(groupBox).toBeChecked();
  await showView(page, 'Header');
  await showView(page, 'Snapshots');
  await expect(groupBox).toBeChecked();

  await page.getByRole('button', { name: 'Delete old' }).click();
  const dialog = page.getByRole('dialog');
  const listed = dialog.getByRole('list', { name: 'Images that change' }).getByRole('listitem');
  await expect(listed).toHaveText(['sys.qcow2', 'data.qcow2']);
  await dialog.getByRole('button', { name: 'Confirm' }).click();
  await expect(dialog).toHaveCount(0);
  await expect(page.getByRole('table', { name: 'Snapshots' }).getByRole('cell', { name: 'old', exact: true })).toHaveCount(0);

  // Both images lost "old", as QEMU reads them.
  for (const name of ['sys.qcow2', 'data.qcow2']) {
    const saved = await downloadImage(page, path.join(tmp, `saved-${name}`), name);
    expect(qemuCheck(saved).exitCode).toBe(0);
    expect(snapshotNames(saved)).toEqual(['base']);
  }
});

test('2. first visit: the demo says it is a demo, shows how to open one\'s own image, and stays closed once closed', async ({ page, tmp }) => {
  await page.goto('/');
  await expect(page.getByRole('tab', { name: 'demo.qcow2' })).toHaveAttribute('aria-selected', 'true');
  const note = page.getByRole('region', { name: 'Demo image' });
  await expect(note).toContainText('demo built in this page');
  // The way to one's own image is on the same screen, without scrolling.
  await expect(note.getByRole('button', { name: 'Open your own image' })).toBeInViewport();
  // It opens the person's image (the file input, as when the browser has no picker).
  await page.evaluate(() => delete (window as unknown as { showOpenFilePicker?: unknown }).showOpenFilePicker);
  const own = makeImage(tmp, 'mine.qcow2');
  const chooser = page.waitForEvent('filechooser');
  await note.getByRole('button', { name: 'Open your own image' }).click();
  await (await chooser).setFiles(own.path);
  await expect(page.getByRole('tab', { name: 'mine.qcow2' })).toHaveAttribute('aria-selected', 'true');
  await expect(page.getByRole('region', { name: 'Demo image' })).toHaveCount(0);

  // The demo, asked for again, is closed with its own button: the introduction is not needed
  // again, and a reload does not bring the demo back.
  await page.getByRole('button', { name: 'Try the demo image' }).click();
  await page.getByRole('region', { name: 'Demo image' }).getByRole('button', { name: 'Close the demo' }).click();
  await expect(page.getByRole('tab', { name: 'demo.qcow2' })).toHaveCount(0);
  // The start demo is built by the engine worker, started while the page loads: after the reload
  // no worker starts at all, and the introduction is what shows.
  let workers = 0;
  page.on('worker', () => workers++);
  await page.reload({ waitUntil: 'load' });
  await expect(page.getByRole('heading', { name: 'See inside a qcow2 disk image' })).toBeVisible();
  await expect(page.getByRole('tab')).toHaveCount(0);
  expect(workers).toBe(0);
});

test('3. an image that cannot be opened is named with what is wrong, and the demo stays', async ({ page, tmp }) => {
  const empty = path.join(tmp, 'empty.qcow2');
  fs.writeFileSync(empty, '');
  const text = path.join(tmp, 'notes.qcow2');
  fs.writeFileSync(text, 'hello, this is not a disk image\n'.repeat(10));
  // QEMU refuses both too.
  for (const f of [empty, text]) expect(qemuImg(['info', '-f', 'qcow2', f]).status).toBe(1);

  await page.goto('/');
  await expect(page.getByRole('tab', { name: 'demo.qcow2' })).toHaveAttribute('aria-selected', 'true');
  await page.getByLabel('Image file').setInputFiles(empty);
  await expect(page.getByRole('alert')).toContainText('empty.qcow2: the file is empty');
  await page.getByLabel('Image file').setInputFiles(text);
  await expect(page.getByRole('alert')).toContainText('notes.qcow2: not a qcow2 image');
  // The failed opens left the demo open and shown, with its views.
  await expect(page.getByRole('tab')).toHaveCount(1);
  await expect(page.getByRole('tab', { name: 'demo.qcow2' })).toHaveAttribute('aria-selected', 'true');
  await showView(page, 'Snapshots');
  await expect(page.getByRole('table', { name: 'Snapshots' })).toBeVisible();
});

test('4. one size parser: "900M" and "64k" mean the same in Translation, Hex and Playground; an error clears Before/After', async ({ page, tmp }) => {
  const file = path.join(tmp, 'big.qcow2');
  createImage(file, '1G');
  qemuIoOk(file, 'write -P 0x11 900M 64k');
  const at900M = qemuMap(file).find((e) => e.data && e.start <= 900 * 2 ** 20 && 900 * 2 ** 20 < e.start + e.length)!;
  const host = at900M.offset! + (900 * 2 ** 20 - at900M.start);
  await page.goto('/');
  await openViaInput(page, { path: file, name: 'big.qcow2' });

  await showView(page, 'Translation');
  await page.getByLabel('Guest offset').fill('900M');
  await page.getByRole('button', { name: 'Translate' }).click();
  await expect(page.getByRole('main').getByRole('status')).toContainText(`is at host offset 0x${host.toString(16)}`);

  await showView(page, 'Hex');
  await page.getByRole('textbox', { name: 'Host offset' }).fill('64k');
  await expect(page.getByRole('table', { name: 'Bytes of cluster 1' })).toBeVisible();
  await expect(page.getByRole('alert')).toHaveCount(0);

  await showView(page, 'Playground');
  const beforeAfter = page.getByRole('main').getByRole('status');
  await page.getByLabel('Guest offset').fill('900M');
  await page.getByLabel('Length').fill('64k');
  await page.getByLabel('Byte').fill('0x5a');
  await page.getByRole('button', { name: 'Write', exact: true }).click();
  await expect(beforeAfter).toContainText(`host 0x${host.toString(16)}`);
  // Past the end of the 1 GiB disk: the engine refuses, and the last write's Before/After goes.
  await page.getByLabel('Guest offset').fill('2G');
  await page.getByRole('button', { name: 'Write', exact: true }).click();
  await expect(page.getByRole('alert')).toContainText('outside');
  await expect(beforeAfter).toHaveCount(0);
  await expect(page.getByRole('heading', { name: 'What the write did' })).toHaveCount(0);
  // Text that is no size is said next to the field, in the same words as elsewhere.
  await page.getByLabel('Guest offset').fill('12zz');
  await page.getByRole('button', { name: 'Write', exact: true }).click();
  await expect(page.getByRole('alert')).toContainText('Guest offset: “12zz” is not a number of bytes');

  const saved = await downloadImage(page, path.join(tmp, 'big-written.qcow2'));
  expect(qemuCheck(saved).exitCode).toBe(0);
  expect(verifyPattern(saved, 900 * 2 ** 20, 64 * 1024, 0x5a)).toBe(true);
});

test('5. Escape in the Revert or Delete dialog gives focus back to the button that opened it', async ({ page, tmp }) => {
  const f = makeImage(tmp);
  await page.goto('/');
  await openViaInput(page, f);
  await showView(page, 'Snapshots');
  for (const name of ['Revert to snapA', 'Delete snapB']) {
    const opener = page.getByRole('button', { name });
    await opener.focus();
    await page.keyboard.press('Enter');
    await expect(page.getByRole('dialog')).toBeVisible();
    await page.keyboard.press('Escape');
    await expect(page.getByRole('dialog')).toHaveCount(0);
    await expect(opener).toBeFocused();
  }
  // Cancel by its button gives focus back the same way; nothing changed.
  await page.getByRole('button', { name: 'Delete snapA' }).click();
  await page.getByRole('dialog').getByRole('button', { name: 'Cancel' }).click();
  await expect(page.getByRole('button', { name: 'Delete snapA' })).toBeFocused();
  await expect(page.getByRole('table', { name: 'Snapshots' }).locator('tbody tr')).toHaveCount(2);
});

test('6. phone: a short top bar, an inspector sheet that closes, L2 rows whole, a view strip that shows it scrolls', async ({ page, tmp }) => {
  const f = makeImage(tmp, 'phone.qcow2');
  await page.setViewportSize({ width: 390, height: 844 });
  await page.goto('/');
  await openViaInput(page, f);

  // The top bar (logo, tabs, actions) leaves the screen to the view.
  const bar = await page.getByRole('banner').boundingBox();
  expect(bar!.height).toBeLessThanOrEqual(96);

  // The view strip shows that more views are to its right, and moves on when asked.
  const more = page.getByRole('button', { name: 'More views' });
  await expect(more).toBeVisible();
  const check = page.getByRole('navigation', { name: 'Views' }).getByRole('link', { name: 'Check', exact: true });
  await expect(check).not.toBeInViewport({ ratio: 1 });
  // (the button leaves once the strip's end is in sight, which a click may bring a frame later:
  // each round clicks it only while it is there)
  await expect(async () => {
    if (await more.isVisible()) await more.click({ timeout: 2_000 });
    await expect(check).toBeInViewport({ ratio: 1, timeout: 1_000 });
  }).toPass({ timeout: 20_000 });
  await expect(more).toHaveCount(0);

  // L2 rows: every column, the flags and the raw entry included, is on the screen and whole.
  await showView(page, 'L1 table');
  await page.getByRole('button', { name: /^L1 entry 0: L2 table at/ }).click();
  const heading = await page.getByRole('heading', { name: /^L2 table at 0x/ }).textContent();
  const l2Offset = Number(heading!.replace(/^L2 table at /, ''));
  for (const i of [0, 1, 2]) {
    const row = page.getByRole('button', { name: new RegExp(`^L2 entry ${i}:`) });
    const raw = peekU64(f.path, l2Offset + 8 * i);
    const cells = row.locator(':scope > span');
    await expect(cells.nth(5)).toHaveText(raw.toString(16).padStart(16, '0'));
    await expect(cells.nth(4)).toHaveText(raw >> 63n ? 'COPIED' : '');
    const fits = await row.evaluate((el) => Array.from(el.children).every((c) => {
      const r = c.getBoundingClientRect();
      return r.left >= 0 && r.right <= innerWidth && c.scrollWidth <= c.clientWidth + 1;
    }));
    expect(fits, `L2 entry ${i} fits`).toBe(true);
  }

  // The inspector is a sheet over the bottom: it closes, and the view has the screen again.
  await page.getByRole('button', { name: /^L2 entry 0:/ }).click();
  const inspector = page.getByRole('complementary', { name: 'Inspector' });
  await expect(inspector.getByRole('heading', { name: 'L2 entry 0' })).toBeVisible();
  await inspector.getByRole('button', { name: 'Close the inspector' }).click();
  await expect(inspector).toBeHidden();
  const main = await page.locator('main').boundingBox();
  expect(main!.y + main!.height).toBeGreaterThanOrEqual(844 - 1);
  // The next selection opens it again.
  await page.getByRole('button', { name: /^L2 entry 1:/ }).click();
  await expect(inspector.getByRole('heading', { name: 'L2 entry 1' })).toBeVisible();
});

/** host cluster → guest byte ranges ("0x0–0xffff") of `file`'s active disk, by qemu-img map. */
function rangesByCluster(file: string, cs: number): Map<number, string[]> {
  const ranges = [...qemuGuestRangesByCluster(file, cs)];
  return new Map(ranges.map(([c, l]) => [c, l.map(([s, n]) => `0x${s.toString(16)}–0x${(s + n - 1).toString(16)}`)]));
}

test('7. the cluster inspector says who uses a cluster; the snapshot table shows ICOUNT and its selection plainly', async ({ page, tmp }) => {
  const f = makeImage(tmp, 'users.qcow2');
  const cs = 65536;
  // The oracle: qemu-img map of the active disk, and of copies reverted to each snapshot.
  const views = [{ label: 'Active disk', ranges: rangesByCluster(f.path, cs) }];
  for (const [id, name] of [['1', 'snapA'], ['2', 'snapB']]) {
    const copy = path.join(tmp, `users-${name}.qcow2`);
    fs.copyFileSync(f.path, copy);
    qemuImgOk(['snapshot', '-a', name, copy]);
    views.push({ label: `Snapshot ${name} (ID ${id})`, ranges: rangesByCluster(copy, cs) });
  }
  await page.goto('/');
  await openViaInput(page, f);
  await showView(page, 'Translation');
  const inspector = page.getByRole('complementary', { name: 'Inspector' });
  // Guest 0 (held by both snapshots and the active disk) and guest 64k (rewritten after snapA).
  for (const guest of [0, 0x10000]) {
    await page.getByLabel('Guest offset').fill(String(guest));
    await page.getByRole('button', { name: 'Translate' }).click();
    await page.getByRole('button', { name: /^Select host cluster/ }).click();
    const cluster = Number((await inspector.getByRole('heading', { name: /^Host cluster/ }).textContent())!.replace('Host cluster ', ''));
    const users = views.filter((v) => v.ranges.has(cluster));
    expect(users.length).toBeGreaterThan(0);
    const list = inspector.getByRole('list', { name: 'Used by' });
    await expect(list.locator(':scope > li')).toHaveCount(users.length);
    for (const [i, v] of users.entries()) {
      const item = list.locator(':scope > li').nth(i);
      await expect(item.locator('strong')).toHaveText(v.label);
      await expect(item.getByRole('listitem')).toHaveText(v.ranges.get(cluster)!);
    }
    const held = users.filter((v) => v.label !== 'Active disk').map((v) => v.label.replace(/^Snapshot (\S+).*/, '$1'));
    await expect(inspector.getByText('Snapshots holding it').locator('xpath=following-sibling::dd[1]')).toHaveText(held.length ? held.join(', ') : 'none');
    await expect(inspector.getByText(/^Refcount$/)).toBeVisible();
  }

  // The snapshot table: ICOUNT as qemu-img snapshot -l prints it; the selected row marked, the hint gone.
  await showView(page, 'Snapshots');
  const listed = qemuImgOk(['snapshot', '-l', f.path]).split('\n').slice(2).filter(Boolean);
  const header = qemuImgOk(['snapshot', '-l', f.path]).split('\n')[1]!;
  const icountAt = header.indexOf('VM CLOCK') + 'VM CLOCK'.length;
  const table = page.getByRole('table', { name: 'Snapshots' });
  const icountCol = (await table.getByRole('columnheader').allTextContents()).indexOf('ICOUNT');
  expect(icountCol).toBeGreaterThan(0);
  for (const [i, line] of listed.entries()) {
    await expect(table.locator('tbody tr').nth(i).getByRole('cell').nth(icountCol)).toHaveText(line.slice(icountAt).trim());
  }
  const hint = page.getByText('Select a snapshot to view it, or to export it.');
  await expect(hint).toBeVisible();
  const row = table.locator('tbody tr').nth(1);
  await row.click();
  await expect(row).toHaveAttribute('aria-current', 'true');
  await expect(table.locator('tbody tr[aria-current]')).toHaveCount(1);
  const marked = await row.evaluate((el) => {
    const tr = el as HTMLTableRowElement;
    const other = (tr.parentElement as HTMLTableSectionElement).rows[0]!;
    return { bar: getComputedStyle(tr.cells[0]!).boxShadow, bg: getComputedStyle(tr).backgroundColor, other: getComputedStyle(other).backgroundColor };
  });
  expect(marked.bar).toContain('inset');
  expect(marked.bg).not.toBe(marked.other);
  await expect(hint).toHaveCount(0);
});
