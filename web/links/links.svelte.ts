// Links: the page's address (web/links/address.ts) kept in the URL as the person navigates, and
// an address restored on load. The demo and gallery images are rebuilt in the page (the same
// bytes for everyone); a person's own image is only named: its link asks to open that file, and
// shows the view once a file of that name is open. Nothing of an image's bytes is ever in a link.
import { SvelteMap } from 'svelte/reactivity';
import type { AppState, ImageTab, Selection, ViewName } from '../lib/app.svelte.ts';
import { headerRows } from '../lib/header-fields.ts';
import { VIEWS } from '../views/registry.ts';
import { formatAddress, parseAddress, type Address } from './address.ts';

/**
 * What views read from an address and write back (views without app state of their own).
 * Translation: the offset and snapshot asked; `seq` counts addresses applied (each is translated
 * once), `linked` says the offset came from a link or lesson (it wins over a selected L2 entry).
 */
export const viewParams = $state<{ translate: { offset: number | null; through: string; seq: number; linked: boolean } }>({
  translate: { offset: null, through: '', seq: 0, linked: false },
});

/** Ask Translation to follow `offset` (through a snapshot id, or '' for the active disk) once, over a selected L2 entry. */
export function askTranslation(offset: number, through = ''): void {
  viewParams.translate = { offset, through, seq: viewParams.translate.seq + 1, linked: true };
}

/**
 * Tabs of gallery images, by tab id: the gallery id, and for the lower files of a chain the file
 * name too (gallery:chain:base.qcow2). The demo is ImageTab.isDemo.
 */
const gallerySource = new SvelteMap<string, string>();

/** How a link names the tab's image. */
export function sourceOf(tab: ImageTab): string {
  if (tab.isDemo) return 'demo';
  const g = gallerySource.get(tab.id);
  return g ? `gallery:${g}` : `file:${tab.name}`;
}

/** The image is rebuilt by the page from its link (demo or gallery): anyone who opens it sees the same. */
export function isShareable(tab: ImageTab): boolean {
  return !sourceOf(tab).startsWith('file:');
}

function selectionParam(s: Selection | null): string | undefined {
  if (!s) return undefined;
  switch (s.kind) {
    case 'cluster': return `cluster:0x${s.hostOffset.toString(16)}`;
    case 'l1': return `l1:${s.entry.index}`;
    case 'l2': return `l2:${s.l1Index}.${s.entry.index}`;
    case 'snapshot': return `snap:${s.snapshot.id}`;
    case 'refcount': return `refcount:${s.clusterIndex}`;
    case 'refcount-table': return `rt:${s.entry.index}`;
    case 'field': return `field:${s.spec}`;
    default: return undefined;
  }
}

/** The address of what the page shows now (lesson fields are added by the lesson guide). */
export function currentAddress(app: AppState, extra: Pick<Address, 'lesson' | 'step'> = {}): Address {
  const tab = app.active;
  if (!tab) return {};
  const a: Address = { img: sourceOf(tab), view: app.view, sel: selectionParam(app.selection), ...extra };
  if (app.view === 'translate' && viewParams.translate.offset !== null) {
    a.offset = viewParams.translate.offset;
    a.through = viewParams.translate.through || undefined;
  }
  return a;
}

/** Rebuild a selection from its address form (reading the entries it names from the engine). */
export async function restoreSelection(app: AppState, tab: ImageTab, sel: string): Promise<Selection | null> {
  const [kind, arg = ''] = sel.split(/:(.*)/s) as [string, string?];
  const n = Number(arg);
  const h = tab.summary.header;
  switch (kind) {
    case 'cluster': return Number.isSafeInteger(n) ? { kind: 'cluster', hostOffset: n } : null;
    case 'snap': {
      const snapshot = tab.summary.snapshots.find((s) => s.id === arg);
      return snapshot ? { kind: 'snapshot', snapshot } : null;
    }
    case 'l1': {
      const entry = (await app.l1Page(tab, n, 1)).entries[0];
      return entry ? { kind: 'l1', entry } : null;
    }
    case 'l2': {
      const [l1Index, l2Index] = arg.split('.').map(Number) as [number, number];
      const l1 = (await app.l1Page(tab, l1Index, 1)).entries[0];
      if (!l1?.l2Offset) return null;
      const entry = (await app.l2Table(tab, l1.l2Offset))[l2Index];
      if (!entry) return null;
      return { kind: 'l2', entry, l1Index, l2Offset: l1.l2Offset, guestOffset: (l1Index * h.l2Entries + l2Index) * h.clusterSize };
    }
    case 'refcount': {
      const perBlock = (h.clusterSize * 8) / h.refcountBits;
      const block = await app.refcountBlock(tab, Math.floor(n / perBlock));
      return { kind: 'refcount', clusterIndex: n, refcount: block[n % perBlock] ?? 0, refcountBits: h.refcountBits };
    }
    case 'rt': {
      const entry = (await app.refcountTablePage(tab, n, 1)).entries[0];
      return entry ? { kind: 'refcount-table', entry } : null;
    }
    case 'field': {
      const row = headerRows(h).find((r) => r.spec === arg && !r.absent);
      return row ? { kind: 'field', spec: row.spec, value: row.value, explain: row.explain, offset: row.offset, size: row.size } : null;
    }
    default: return null;
  }
}

/** Find the open tab an address's image names, or open it (demo, gallery). A person's file is only found. */
async function tabFor(app: AppState, img: string): Promise<ImageTab | null> {
  const open = app.tabs.find((t) => sourceOf(t) === img);
  if (open) {
    if (app.activeId !== open.id) app.activate(open.id);
    return open;
  }
  if (img === 'demo') {
    await app.openDemo();
    return app.tabs.find((t) => t.isDemo) ?? null;
  }
  if (img.startsWith('gallery:')) {
    const [id = '', file] = img.slice('gallery:'.length).split(/:(.*)/s);
    const before = new Set(app.tabs.map((t) => t.id));
    const shown = await app.openGallery(id);
    if (!shown) return null;
    for (const t of app.tabs) if (!before.has(t.id)) gallerySource.set(t.id, t === shown ? id : `${id}:${t.name}`);
    const tab = file ? app.tabs.find((t) => gallerySource.get(t.id) === `${id}:${file}`) : shown;
    if (tab && app.activeId !== tab.id) app.activate(tab.id);
    return tab ?? null;
  }
  return null;
}

/** The link names a person's file that is not open: shown once a file of that name opens. */
let waitingFor: { name: string; address: Address } | null = null;

/** Restore an address: its image (opened when needed), view, Translation's offset and selection. */
export async function applyAddress(app: AppState, a: Address): Promise<ImageTab | null> {
  let tab = app.active;
  if (a.img) {
    tab = await tabFor(app, a.img);
    if (!tab) {
      const name = a.img.replace(/^file:/, '');
      waitingFor = { name, address: a };
      app.message = {
        kind: 'info',
        text: a.img.startsWith('file:')
          ? `This link shows ${name}, an image on the sender's device (links never carry an image's bytes). Open your copy of ${name} to see it.`
          : `This link names an example image this version does not have (${a.img}).`,
      };
      return null;
    }
  }
  if (!tab) return null;
  if (a.view && VIEWS.some((v) => v.id === a.view)) app.view = a.view as ViewName;
  if (a.offset !== undefined) askTranslation(a.offset, a.through ?? '');
  app.select(a.sel ? await restoreSelection(app, tab, a.sel).catch(() => null) : null);
  return tab;
}

/** A tab opened: if a link was waiting for a file of its name, show what the link names. */
export function openedTab(app: AppState): void {
  const w = waitingFor;
  const tab = app.active;
  if (!w || !tab || tab.name !== w.name) return;
  waitingFor = null;
  void applyAddress(app, { ...w.address, img: undefined });
}

/** While an address is being restored, the page does not write its own into the URL. */
export const restoring = $state({ count: 0 });

/** Restore `hash` (counted in `restoring`). */
export async function restoreHash(app: AppState, hash: string): Promise<ImageTab | null> {
  restoring.count++;
  try {
    return await applyAddress(app, parseAddress(hash));
  } finally {
    restoring.count--;
  }
}

/** On start: a link naming an image restores it (and returns true); otherwise the page starts as always. */
export function startFromAddress(app: AppState): boolean {
  const a = parseAddress(location.hash);
  if (!a.img) return false;
  void restoreHash(app, location.hash);
  return true;
}

/** Write the current address into the URL without a new history entry. */
export function writeAddress(app: AppState, extra: Pick<Address, 'lesson' | 'step'> = {}): void {
  if (restoring.count > 0 || !app.active) return;
  const hash = formatAddress(currentAddress(app, extra));
  if (hash && hash !== location.hash) history.replaceState(history.state, '', hash);
}

/** The page's link as text (for "Copy link"). */
export function linkOf(app: AppState, extra: Pick<Address, 'lesson' | 'step'> = {}): string {
  return location.href.replace(/#.*$/, '') + formatAddress(currentAddress(app, extra));
}
