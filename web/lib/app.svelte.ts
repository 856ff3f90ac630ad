// The app's state: open images (tabs), the current view, the one shared selection, the running
// job and the last message. Views read it from context (web/lib/context.ts) and call its
// methods; only this class and web/lib/engine.ts talk to the worker.
import type {
  CheckFindingDTO,
  CheckReportDTO,
  ClusterMapDTO,
  ClusterUsers,
  DiffResult,
  ImageSummary,
  JournalDTO,
  L1EntryDTO,
  L2EntryDTO,
  Progress,
  RefcountTableEntryDTO,
  SnapshotDTO,
  SnapshotSpace,
  TablePage,
  Translation,
} from '../../worker/api.ts';
import { engine, withJob } from './engine.ts';
import { isInFolder, saveAllToFolder, type FileToSave } from './save-folder.ts';
import { damageView, viewWorks } from './damage.ts';
import { VIEWS, type ViewName } from '../views/registry.ts';
import { describeError as describe, openFailure, type Message } from './errors.ts';
import { Saving } from './saving.svelte.ts';

export type { Message, ViewName };

/** What the inspector decodes; shared by every view. */
export type Selection =
  | { kind: 'field'; spec: string; value: string; explain: string; offset: number; size: number }
  | { kind: 'l1'; entry: L1EntryDTO }
  | { kind: 'l2'; entry: L2EntryDTO; l1Index: number; l2Offset: number; guestOffset: number }
  | { kind: 'refcount'; clusterIndex: number; refcount: number; refcountBits: number }
  | { kind: 'refcount-table'; entry: RefcountTableEntryDTO }
  | { kind: 'snapshot'; snapshot: SnapshotDTO }
  | { kind: 'finding'; finding: CheckFindingDTO }
  | { kind: 'cluster'; hostOffset: number };

export interface Busy {
  label: string;
  progress?: Progress;
  controller: AbortController;
  /** A save of a person's file (the save bar shows it, with bytes and time left). */
  save?: boolean;
}

/** One open image. Big results are $state.raw: they are replaced whole, never mutated. */
export class ImageTab {
  readonly id: string;
  /** The File System Access handle, kept on the page to ask for write permission. */
  readonly handle: FileSystemFileHandle | undefined;
  summary = $state.raw<ImageSummary>() as ImageSummary;
  check = $state.raw<CheckReportDTO | null>(null);
  clusterMap = $state.raw<ClusterMapDTO | null>(null);
  /** The journal of every write operation made in this session, newest last. */
  journals = $state.raw<JournalDTO[]>([]);
  /** The two views the Diff view compares (snapshot IDs, '' for the active disk), kept across views. */
  diffPair: { a: string; b: string } | null = null;
  /** The last diff (Diff view) and what it compared, kept across views. */
  diff = $state.raw<{ a: string | null; b: string | null; label: string; result: DiffResult } | null>(null);
  /** Host clusters the cluster map outlines besides check findings (the diff's), with a label. */
  mapHighlight = $state.raw<{ label: string; clusters: number[] } | null>(null);
  /** Bumped after every change, so views reload what they fetched. */
  revision = $state(0);
  /** The demo image built in the page (not a file of the person's): the view says so. */
  isDemo = false;

  constructor(summary: ImageSummary, handle?: FileSystemFileHandle) {
    this.id = summary.state.id;
    this.summary = summary;
    this.handle = handle;
  }

  get name(): string {
    return this.summary.state.name;
  }

  update(summary: ImageSummary): void {
    this.summary = summary;
    if (summary.journal) this.journals = [...this.journals, summary.journal];
    this.check = null;
    this.clusterMap = null;
    this.diff = null;
    this.mapHighlight = null;
    this.revision++;
  }
}

const DEMO_CLOSED_KEY = 'qcowscope.demo-closed';

/** The person closed the demo once (kept in localStorage; storage that is refused counts as never). */
function demoClosedBefore(): boolean {
  try {
    return localStorage.getItem(DEMO_CLOSED_KEY) === '1';
  } catch {
    return false;
  }
}

function rememberDemoClosed(): void {
  try {
    localStorage.setItem(DEMO_CLOSED_KEY, '1');
  } catch {
    // Storage refused (private mode, policy): the demo comes back next time, nothing worse.
  }
}

export class AppState {
  tabs = $state<ImageTab[]>([]);
  activeId = $state<string | null>(null);
  view = $state<ViewName>('header');
  selection = $state.raw<Selection | null>(null);
  busy = $state.raw<Busy | null>(null);
  message = $state.raw<Message | null>(null);
  /**
   * "Apply to all open images as one group" (Snapshots): a choice of this window, kept across tab
   * switches and views, so that a group operation never quietly becomes a one-image one.
   */
  groupMode = $state(false);
  /** Saving changes to a person's files, and the questions asked before changes could be lost. */
  readonly saving = new Saving(this);

  active = $derived(this.tabs.find((t) => t.id === this.activeId) ?? null);

  /** The File System Access picker exists (Chromium); elsewhere "Open image" uses the file input. */
  readonly hasPicker = typeof window !== 'undefined' && 'showOpenFilePicker' in window;
  /** A folder can be chosen to save several files into (Chromium); elsewhere files are downloads. */
  readonly hasFolderPicker = typeof window !== 'undefined' && 'showDirectoryPicker' in window;

  /** Run one engine call with the busy indicator, cancellation and error reporting. */
  async run<T>(
    label: string,
    body: (opts: { signal: AbortSignal; onProgress: (p: Progress) => void }) => Promise<T>,
    failed: (e: unknown) => Message | Promise<Message> = describe,
    save = false,
  ): Promise<T | undefined> {
    const controller = new AbortController();
    this.busy = { label, controller, save };
    this.message = null;
    try {
      return await body({
        signal: controller.signal,
        onProgress: (p) => {
          if (this.busy?.controller === controller) this.busy = { label, controller, progress: p, save };
        },
      });
    } catch (e) {
      this.message = await failed(e);
      return undefined;
    } finally {
      if (this.busy?.controller === controller) this.busy = null;
    }
  }

  cancel(): void {
    this.busy?.controller.abort();
  }

  private add(summary: ImageSummary, handle?: FileSystemFileHandle, isDemo = false): void {
    const tab = new ImageTab(summary, handle);
    tab.isDemo = isDemo;
    this.tabs.push(tab);
    this.activeId = tab.id;
    this.selection = null;
    const d = summary.state.damage;
    if (d) {
      // One line; what can still be shown is said next to the structure (DamageNote).
      this.message = { kind: 'error', text: `${summary.state.name} failed validation: ${d.line}`, code: d.code };
      // Show the error next to the structure it names, where that view can be drawn.
      const where = damageView(d);
      this.show(viewWorks(where, d) ? where : 'header');
    }
  }

  /**
   * The demo image opened on start so that a first visit has something to explore. It gives way
   * (closes) when the person opens an image of their own, unless they have changed it.
   */
  private startDemo: { promise: Promise<void>; id: string | null; wanted: boolean } | null = null;

  /** On start, with nothing open and the demo never closed before: open the demo image quietly (no busy bar, errors ignored). */
  openDemoOnStart(): void {
    if (this.tabs.length || this.startDemo || demoClosedBefore()) return;
    const d: { promise: Promise<void>; id: string | null; wanted: boolean } = { promise: Promise.resolve(), id: null, wanted: true };
    d.promise = (async () => {
      const s = await engine().openDemo().catch(() => undefined);
      if (!s) return;
      if (!d.wanted) {
        await engine().close(s.state.id).catch(() => {});
        return;
      }
      d.id = s.state.id;
      this.add(s, undefined, true);
    })();
    this.startDemo = d;
  }

  /** An image of the person's own is being opened: the start demo closes if it is untouched. */
  private dropStartDemo(): void {
    const d = this.startDemo;
    if (!d) return;
    this.startDemo = null;
    d.wanted = false;
    const tab = d.id ? this.tabs.find((t) => t.id === d.id) : undefined;
    if (!tab) return;
    if (tab.summary.state.unsaved || tab.journals.length > 0) return; // changed: it is theirs now
    void this.close(tab.id);
  }

  // An image that fails to open leaves the page as it was (the start demo included): the demo gives
  // way only to an image that opened.
  async openFiles(files: File[]): Promise<void> {
    for (const file of files) {
      const s = await this.run(`Opening ${file.name}`, () => engine().openFile(file), (e) => openFailure(file.name, file.size, e));
      if (s) {
        this.dropStartDemo();
        this.add(s);
      }
    }
  }

  async openHandles(handles: FileSystemFileHandle[]): Promise<void> {
    for (const handle of handles) {
      const failed = async (e: unknown) => openFailure(handle.name, await handle.getFile().then((f) => f.size, () => undefined), e);
      const s = await this.run(`Opening ${handle.name}`, () => engine().openHandle(handle), failed);
      if (!s) continue;
      this.dropStartDemo();
      this.add(s, handle);
      this.saving.remember(handle);
      await this.saving.offerKept(this.tabs[this.tabs.length - 1]!);
    }
  }

  /** "Open image": the File System Access picker where it exists. Returns false when there is none. */
  async pick(): Promise<boolean> {
    const w = window as unknown as { showOpenFilePicker?: (o: object) => Promise<FileSystemFileHandle[]> };
    if (!w.showOpenFilePicker) return false;
    let handles: FileSystemFileHandle[];
    try {
      handles = await w.showOpenFilePicker({
        multiple: true,
        id: 'qcowscope-open',
        types: [{ description: 'qcow2 disk images', accept: { 'application/octet-stream': ['.qcow2', '.qcow', '.img'] } }],
        excludeAcceptAllOption: false,
      });
    } catch (e) {
      if ((e as DOMException).name !== 'AbortError') this.message = describe(e);
      return true;
    }
    await this.openHandles(handles);
    return true;
  }

  /** Items of a drop: handles where the browser gives them (writable in place), Files otherwise. */
  async openDropped(dt: DataTransfer): Promise<void> {
    // getAsFileSystemHandle must be called for every item before the first await (the list empties).
    const entries: { handle: Promise<FileSystemHandle | null> | null; file: File | null }[] = [];
    for (const item of Array.from(dt.items)) {
      if (item.kind !== 'file') continue;
      const getHandle = (item as DataTransferItem & { getAsFileSystemHandle?: () => Promise<FileSystemHandle | null> }).getAsFileSystemHandle;
      entries.push({ handle: getHandle ? getHandle.call(item).catch(() => null) : null, file: item.getAsFile() });
    }
    if (entries.length === 0 && dt.files.length) {
      await this.openFiles(Array.from(dt.files));
      return;
    }
    for (const e of entries) {
      const h = e.handle ? await e.handle : null;
      if (h && h.kind === 'file') await this.openHandles([h as FileSystemFileHandle]);
      else if (e.file) await this.openFiles([e.file]);
    }
  }

  async openDemo(): Promise<void> {
    // The demo opened on start is the one asked for: show it, and keep it from now on.
    const d = this.startDemo;
    if (d) {
      this.startDemo = null;
      await d.promise;
      const tab = d.id ? this.tabs.find((t) => t.id === d.id) : undefined;
      if (tab) {
        this.activate(tab.id);
        return;
      }
    }
    const s = await this.run('Building the demo image', () => engine().openDemo());
    if (s) this.add(s, undefined, true);
  }

  async close(id: string): Promise<void> {
    let i = this.tabs.findIndex((t) => t.id === id);
    if (i < 0 || !(await this.saving.mayClose(this.tabs[i]!))) return;
    i = this.tabs.findIndex((t) => t.id === id);
    if (i < 0) return;
    // A closed demo stays closed: the next visit starts on the introduction, not on the demo.
    if (this.tabs[i]!.isDemo) rememberDemoClosed();
    this.tabs.splice(i, 1);
    if (this.activeId === id) this.activeId = this.tabs[Math.min(i, this.tabs.length - 1)]?.id ?? null;
    this.selection = null;
    await engine().close(id).catch(() => {});
    // An original whose overlay closed may be writable again.
    for (const t of this.tabs) {
      if (!t.summary.state.readOnlyReason) continue;
      const fresh = await engine().summary(t.id).catch(() => undefined);
      if (fresh) t.summary = fresh;
    }
  }

  activate(id: string): void {
    this.activeId = id;
    this.selection = null;
  }

  show(view: ViewName): void {
    this.view = view;
    if (location.hash !== `#/${view}`) history.pushState(null, '', `#/${view}`);
  }

  /** Follow the URL's #/view (rail links, Back and Forward). */
  syncFromHash(): void {
    const v = location.hash.replace(/^#\/?/, '');
    if (VIEWS.some((x) => x.id === v)) this.view = v as ViewName;
  }

  select(s: Selection | null): void {
    this.selection = s;
  }

  /**
   * Before a change: refuse a read-only image; before the first change to a person's own file,
   * say that no VM may run from it. Its changes wait in the tab: write permission is asked on Save.
   */
  private async ensureWritable(tab: ImageTab, repairing = false): Promise<boolean> {
    const st = tab.summary.state;
    if (!st.writable && !(repairing && st.repairable)) {
      this.message = { kind: 'error', text: `${st.name} is read-only${st.readOnlyReason ? `: ${st.readOnlyReason}` : ''}`, code: 'READ_ONLY' };
      return false;
    }
    return this.saving.beforeFirstChange(tab);
  }

  private async write(tab: ImageTab, label: string, op: (opts: { signal: AbortSignal; onProgress: (p: Progress) => void }) => Promise<ImageSummary>): Promise<boolean> {
    if (!(await this.ensureWritable(tab))) return false;
    const s = await this.run(label, op);
    if (!s) {
      // The operation failed: show the image as it now is.
      const fresh = await engine().summary(tab.id).catch(() => undefined);
      if (fresh) tab.update(fresh);
      return false;
    }
    tab.update(s);
    this.selection = null;
    return true;
  }

  writePattern(tab: ImageTab, guestOffset: number, length: number, pattern: number): Promise<boolean> {
    return this.write(tab, `Writing ${length} bytes at guest ${guestOffset}`, () => engine().writePattern(tab.id, guestOffset, length, pattern));
  }

  createSnapshot(tab: ImageTab, name: string): Promise<boolean> {
    return this.write(tab, `Creating snapshot ${name}`, (o) => withJob(o, (j, p) => engine().createSnapshot(tab.id, name, j, p)));
  }

  revertSnapshot(tab: ImageTab, idOrName: string): Promise<boolean> {
    return this.write(tab, `Reverting to ${idOrName}`, (o) => withJob(o, (j, p) => engine().revertSnapshot(tab.id, idOrName, j, p)));
  }

  deleteSnapshot(tab: ImageTab, idOrName: string): Promise<boolean> {
    return this.write(tab, `Deleting ${idOrName}`, (o) => withJob(o, (j, p) => engine().deleteSnapshot(tab.id, idOrName, j, p)));
  }

  /** Open the file the image names as its backing file (with the files of its own backing chain, if chosen too). */
  async attachBacking(tab: ImageTab, files: File[]): Promise<void> {
    const s = await this.run(`Opening ${files.map((f) => f.name).join(', ')} as the backing chain`, () => engine().attachBacking(tab.id, files));
    if (s) tab.update(s);
  }

  /** One snapshot operation on every open image, as a group: all or none. */
  async groupSnapshot(op: 'create' | 'revert' | 'delete', arg: string): Promise<boolean> {
    const tabs = [...this.tabs];
    for (const t of tabs) if (!(await this.ensureWritable(t))) return false;
    const label = op === 'create' ? `Creating ${arg} on ${tabs.length} images` : op === 'revert' ? `Reverting ${tabs.length} images to ${arg}` : `Deleting ${arg} from ${tabs.length} images`;
    const res = await this.run(label, (o) => withJob(o, (j, p) => engine().groupSnapshot(tabs.map((t) => t.id), op, arg, j, p)));
    if (!res) {
      for (const t of tabs) {
        const fresh = await engine().summary(t.id).catch(() => undefined);
        if (fresh) t.update(fresh);
      }
      return false;
    }
    res.forEach((s, i) => tabs[i]!.update(s));
    this.selection = null;
    return true;
  }

  /**
   * External snapshot of `tabs` (one image or the group), all or none: the worker writes the
   * overlays in memory, they are saved into a folder the person picks (`toFolder`) or offered as
   * downloads, with the originals that are in no file yet (demo, unsaved copies); then each
   * overlay opens in a new tab over its original, which stays read-only while it is open.
   */
  async externalSnapshot(tabs: ImageTab[], suffix: string, toFolder: boolean): Promise<boolean> {
    let dir: FileSystemDirectoryHandle | undefined;
    if (toFolder) {
      // First, on the click's user activation: the folder picker needs it.
      const w = window as unknown as { showDirectoryPicker: (o: object) => Promise<FileSystemDirectoryHandle> };
      try {
        dir = await w.showDirectoryPicker({ id: 'qcowscope-overlays', mode: 'readwrite' });
      } catch (e) {
        this.message = describe(e);
        return false;
      }
    }
    const what = tabs.length === 1 ? tabs[0]!.name : `${tabs.length} images`;
    const overlays = await this.run(`Taking an external snapshot of ${what}`, (o) =>
      withJob(o, (j, p) => engine().externalSnapshot(tabs.map((t) => t.id), suffix, j, p)),
    );
    if (!overlays) return false;
    const files: FileToSave[] = overlays.flatMap((o) => [{ name: o.name, blob: o.blob }, ...(o.base ? [o.base] : [])]);
    let handles: Map<string, FileSystemFileHandle> | undefined;
    const notes: string[] = [];
    if (dir) {
      const d = dir;
      handles = await this.run(`Saving into ${d.name}`, () => saveAllToFolder(d, files));
      if (!handles) return false;
      for (const t of tabs) {
        if (t.handle && !(await isInFolder(d, t.handle))) notes.push(`${t.name} is not in ${d.name}: move the overlay next to it`);
      }
    } else {
      for (const f of files) this.save(f.blob, f.name);
    }
    for (const o of overlays) {
      const handle = handles?.get(o.name);
      const s = await this.run(`Opening ${o.name}`, () => engine().openOverlay(o.baseId, handle ?? new File([o.blob], o.name)));
      if (s) this.add(s, handle);
    }
    // The originals are now backing files: read-only while their overlays are open.
    for (const t of tabs) {
      const fresh = await engine().summary(t.id).catch(() => undefined);
      if (fresh) t.summary = fresh;
    }
    const list = overlays.map((o) => `${o.name} (backing file ${o.backingFile})`).join(', ');
    this.message = {
      kind: 'info',
      text: `External snapshot taken: ${list} ${dir ? `saved in ${dir.name}` : 'downloaded'}${overlays.some((o) => o.base) ? ', with the originals that were in no file' : ''}. Keep each overlay in the same folder as its backing file${dir ? '' : ', under the name above (if the browser saved one as, say, "name (1).qcow2", rename it: the overlay finds its backing file by name)'}.${notes.length ? ' ' + notes.join('; ') + '.' : ''}`,
    };
    return true;
  }

  async runCheck(tab: ImageTab, repair?: 'leaks' | 'all'): Promise<void> {
    this.show('check');
    if (repair && !(await this.ensureWritable(tab, true))) return;
    const report = await this.run(repair ? 'Repairing' : 'Checking', (o) =>
      withJob(o, (j, p) => engine().check(tab.id, repair, j, p)),
    );
    if (!report) return;
    if (repair) {
      const fresh = await engine().summary(tab.id).catch(() => undefined);
      if (fresh) tab.update(fresh);
    }
    tab.check = report;
  }

  /** Compare two views of an image (a snapshot ID, or null for the active disk). */
  async diff(tab: ImageTab, a: string | null, b: string | null, label: string): Promise<void> {
    const result = await this.run(`Comparing ${label}`, (o) => withJob(o, (j, p) => engine().diff(tab.id, a, b, j, p)));
    if (result) tab.diff = { a, b, label, result };
  }

  // ---- What the views read (no busy bar, errors shown where they asked): the worker is reached
  // only through the app state. ----
  /** Who uses host cluster `cluster` (Inspector). */
  clusterUsers(tab: ImageTab, cluster: number): Promise<ClusterUsers> {
    return engine().clusterUsers(tab.id, cluster);
  }
  translate(tab: ImageTab, guestOffset: number, snapshotId?: string): Promise<Translation> {
    return engine().translate(tab.id, guestOffset, snapshotId);
  }
  readBytes(tab: ImageTab, hostOffset: number, length: number): Promise<Uint8Array> {
    return engine().readBytes(tab.id, hostOffset, length);
  }
  l1Page(tab: ImageTab, start: number, count: number): Promise<TablePage<L1EntryDTO>> {
    return engine().l1Page(tab.id, start, count);
  }
  l2Table(tab: ImageTab, l2Offset: number): Promise<L2EntryDTO[]> {
    return engine().l2Table(tab.id, l2Offset);
  }
  refcountTablePage(tab: ImageTab, start: number, count: number): Promise<TablePage<RefcountTableEntryDTO>> {
    return engine().refcountTablePage(tab.id, start, count);
  }
  refcountBlock(tab: ImageTab, refblockIndex: number): Promise<Float64Array> {
    return engine().refcountBlock(tab.id, refblockIndex);
  }
  snapshotSpace(tab: ImageTab, snapshotId: string | null): Promise<SnapshotSpace> {
    return engine().snapshotSpace(tab.id, snapshotId);
  }
  /** Outline some host clusters on the cluster map (a diff's, a snapshot's own) and show the map. */
  outlineOnMap(tab: ImageTab, label: string, ranges: Array<[number, number]>): void {
    const clusters: number[] = [];
    for (const [first, count] of ranges) for (let c = first; c < first + count; c++) clusters.push(c);
    tab.mapHighlight = { label, clusters };
    this.show('map');
  }
  /** A quick comparison for the Inspector (the Diff view's runs as a job: diff()). */
  compare(tab: ImageTab, a: string | null, b: string | null): Promise<DiffResult> {
    return engine().diff(tab.id, a, b);
  }

  async loadClusterMap(tab: ImageTab): Promise<void> {
    const map = await this.run('Mapping clusters', (o) => withJob(o, (j, p) => engine().clusterMap(tab.id, j, p)));
    if (map) tab.clusterMap = map;
  }

  /** "Download image": the image as it now is, as an ordinary browser download under its name. */
  async download(tab: ImageTab): Promise<void> {
    const d = await this.run('Preparing the download', () => engine().download(tab.id));
    if (!d) return;
    this.save(d.blob, d.name);
    // The state line says the changes are in the download now.
    const fresh = await engine().summary(tab.id).catch(() => undefined);
    if (fresh) tab.summary = fresh;
  }

  /** Export the active disk (snapshotId null) or a snapshot as a raw file. */
  async exportRaw(tab: ImageTab, snapshotId: string | null): Promise<void> {
    const d = await this.run('Exporting the raw disk', (o) => withJob(o, (j, p) => engine().exportRaw(tab.id, snapshotId, j, p)));
    if (d) this.save(d.blob, d.name);
  }

  /** An ordinary browser download of a Blob under a name. */
  save(blob: Blob, name: string): void {
    const d = { blob, name };
    const url = URL.createObjectURL(d.blob);
    const a = document.createElement('a');
    a.href = url;
    a.download = d.name;
    a.rel = 'noopener';
    document.body.append(a);
    a.click();
    a.remove();
    // Revoke later: the download reads the Blob after click() returns.
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
  }
}
