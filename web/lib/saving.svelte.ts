// Saving a person's own files: the changes of images opened through a File System Access handle
// wait in the tab; Save writes them (all images with changes, all or none) after saying what it
// costs, with progress and cancel; Discard drops them. Also the questions asked before changes
// could be lost (closing an image, leaving the page) and before the first change to a person's
// file (no VM may be running from it). The dialogs are AskDialog.svelte and SaveBar.svelte.
import type { AppState, ImageTab } from './app.svelte.ts';
import { engine, withJob } from './engine.ts';
import { bytes } from './format.ts';
import { handlesWithKeptChanges, rememberHandle } from './recent-handles.ts';
import { writeBlob } from './save-folder.ts';

/** A question with a few answers, shown by AskDialog. The first choice is the one to go on with. */
export interface Ask {
  title: string;
  lines: string[];
  choices: Array<{ id: string; label: string; danger?: boolean }>;
  answer: (id: string | null) => void;
}

/** A save that rewrites more than this says what it costs first. */
const COSTLY_SAVE_BYTES = 1 << 30;

export class Saving {
  /** The question being asked, if any. */
  ask = $state.raw<Ask | null>(null);
  /** When the running save started and how far it had got (for the time left). */
  started = $state.raw<{ at: number } | null>(null);
  private readonly app: AppState;
  /** Images (tab ids) whose owner was told that no VM may run from them. */
  private readonly warned = new Set<string>();

  constructor(app: AppState) {
    this.app = app;
  }

  /** Images opened through a handle with changes waiting in the tab. */
  get pending(): ImageTab[] {
    return this.app.tabs.filter((t) => t.summary.state.kind === 'handle' && t.summary.state.unsaved);
  }

  /** Changes waiting in the tab over every image (handles and Files alike): leaving loses them. */
  get anyUnsaved(): boolean {
    return this.app.tabs.some((t) => t.summary.state.unsaved);
  }

  /** Ask a question; resolves to the chosen id, or null (Escape, Cancel). */
  question(title: string, lines: string[], choices: Ask['choices']): Promise<string | null> {
    return new Promise((resolve) => {
      this.ask = {
        title,
        lines,
        choices,
        answer: (id) => {
          this.ask = null;
          resolve(id);
        },
      };
    });
  }

  /**
   * Before the first change to a person's file: QEMU locks an image a VM runs from, and
   * qemu-img refuses to write it ("Failed to get write lock"); the browser cannot see that lock.
   */
  async beforeFirstChange(tab: ImageTab): Promise<boolean> {
    if (tab.summary.state.kind !== 'handle' || this.warned.has(tab.id)) return true;
    const go = await this.question(`Before you change ${tab.name}`, [
      `No virtual machine may be running from ${tab.name} while you change it. QEMU would refuse to write an image in use ("Failed to get write lock"), but this browser cannot see QEMU's locks: shut the VM down first.`,
      'Your changes wait in this tab until you choose Save.',
    ], [{ id: 'go', label: 'No VM is running: go on' }, { id: 'cancel', label: 'Cancel' }]);
    if (go !== 'go') return false;
    this.warned.add(tab.id);
    return true;
  }

  /** Before closing an image with changes in no file: ask. */
  async mayClose(tab: ImageTab): Promise<boolean> {
    const st = tab.summary.state;
    if (!st.unsaved) return true;
    const n = st.pendingChanges;
    const what = `${n} unsaved change${n === 1 ? '' : 's'}`;
    const go = await this.question(`Close ${tab.name}?`, [
      st.kind === 'handle'
        ? `${tab.name} has ${what} that are not in the file yet. Closing drops them; the file stays as it is on disk.`
        : `${tab.name} has ${what} that are in no file yet ("Download image" keeps them). Closing drops them.`,
    ], [{ id: 'close', label: 'Close without saving', danger: true }, { id: 'cancel', label: 'Cancel' }]);
    return go === 'close';
  }

  /** Remember a file opened through a handle, to offer it again if its changes outlive the tab. */
  remember(handle: FileSystemFileHandle): void {
    void rememberHandle(handle).catch(() => {});
  }

  /** On start: files with changes kept from an earlier visit (a reload, a crashed tab) are offered again. */
  async offerKeptOnStart(): Promise<void> {
    for (const { handle, changes } of await handlesWithKeptChanges()) {
      if (this.app.tabs.some((t) => t.handle && t.name === handle.name)) continue;
      const go = await this.question('Unsaved changes from an earlier visit', [
        `${changes} change${changes === 1 ? '' : 's'} to ${handle.name} were never saved: the page was closed or reloaded before Save. They are kept in this browser; the file is as it was.`,
      ], [{ id: 'reopen', label: `Reopen ${handle.name}` }, { id: 'cancel', label: 'Not now' }]);
      if (go !== 'reopen') continue;
      // On the click's user activation: reading the file again may need the person's permission.
      const h = handle as FileSystemFileHandle & { requestPermission?: (d: object) => Promise<PermissionState> };
      if (h.requestPermission && (await h.requestPermission({ mode: 'read' })) !== 'granted') continue;
      await this.app.openHandles([handle]);
    }
  }

  /** An image opened again whose changes an earlier visit kept (a reload, a crashed tab): restore them? */
  async offerKept(tab: ImageTab): Promise<void> {
    const k = tab.summary.state.restorable;
    if (!k) return;
    const go = await this.question(`Unsaved changes to ${tab.name}`, [
      `${k.changes} change${k.changes === 1 ? '' : 's'} to ${tab.name} from an earlier visit (last one ${new Date(k.at).toLocaleString()}) were never saved; the file is as it was before them.`,
      'Restore them to save them now, or drop them.',
    ], [{ id: 'restore', label: 'Restore the changes' }, { id: 'drop', label: 'Drop them', danger: true }]);
    if (!go) return;
    const s = await this.app.run(go === 'restore' ? `Restoring the changes to ${tab.name}` : `Dropping the changes to ${tab.name}`, () => engine().keptChanges(tab.id, go === 'restore'));
    if (s) tab.update(s);
  }

  /** "Save": every image with changes waiting, all or none; the cost is said first when it is large. */
  async save(): Promise<void> {
    const tabs = this.pending;
    if (!tabs.length) return;
    const size = tabs.reduce((n, t) => n + t.summary.state.fileSize, 0);
    if (size > COSTLY_SAVE_BYTES) {
      const names = tabs.length === 1 ? `all of ${tabs[0]!.name}` : tabs.map((t) => `${t.name} (${bytes(t.summary.state.fileSize)})`).join(', ');
      const choices: Ask['choices'] = [{ id: 'save', label: 'Rewrite and save' }];
      if (this.hasSavePicker && tabs.length === 1) choices.push({ id: 'save-as', label: 'Save as…' });
      choices.push({ id: 'download', label: 'Download image' }, { id: 'cancel', label: 'Cancel' });
      const go = await this.question('Saving rewrites the whole file', [
        `To save these changes the browser writes ${names} again, from start to end: ${bytes(size)}.`,
        `It needs ${bytes(size)} of free disk space while saving (the new copy is made beside the old one and takes its place at the end).`,
        'Holes of a sparse file are written out as zeros, so the file may take more disk space afterwards.',
      ], choices);
      if (go === 'save-as') return this.saveAs(tabs[0]!);
      if (go === 'download') {
        for (const t of tabs) await this.app.download(t);
        return;
      }
      if (go !== 'save') return;
    }
    // On the click's user activation: the browser asks for write permission if it has not.
    for (const t of tabs) if (!(await this.permitted(t))) return;
    this.started = { at: performance.now() };
    const what = tabs.length === 1 ? tabs[0]!.name : `${tabs.length} images`;
    const res = await this.app.run(`Saving ${what}`, (o) => withJob(o, (j, p) => engine().save(tabs.map((t) => t.id), j, p)), undefined, true);
    this.started = null;
    if (res) {
      res.forEach((s, i) => (tabs[i]!.summary = s));
      this.app.message = { kind: 'info', text: `Saved ${what}: the file${tabs.length === 1 ? ' holds' : 's hold'} every change.` };
    } else {
      for (const t of tabs) await this.reload(t);
    }
  }

  /** "Discard changes": every image listed in the save bar reads its file as it is on disk again. */
  async discard(): Promise<void> {
    const tabs = this.pending;
    if (!tabs.length) return;
    const n = tabs.reduce((k, t) => k + t.summary.state.pendingChanges, 0);
    const go = await this.question('Discard changes?', [
      `${n} change${n === 1 ? '' : 's'} to ${tabs.map((t) => t.name).join(', ')} will be dropped; the file${tabs.length === 1 ? ' stays' : 's stay'} as on disk.`,
    ], [{ id: 'discard', label: 'Discard', danger: true }, { id: 'cancel', label: 'Cancel' }]);
    if (go !== 'discard') return;
    for (const t of tabs) {
      const s = await this.app.run(`Discarding the changes to ${t.name}`, () => engine().discardChanges(t.id));
      if (s) t.update(s);
    }
    await this.app.verbs.afterDiscard(tabs);
  }

  /** The save picker exists (Chromium). */
  readonly hasSavePicker = typeof window !== 'undefined' && 'showSaveFilePicker' in window;

  /** "Save as…": the image with its changes into a new file the person picks; the original and its pending changes stay. */
  private async saveAs(tab: ImageTab): Promise<void> {
    const w = window as unknown as { showSaveFilePicker: (o: object) => Promise<FileSystemFileHandle> };
    let handle: FileSystemFileHandle;
    try {
      handle = await w.showSaveFilePicker({ suggestedName: tab.name, id: 'qcowscope-save-as' });
    } catch (e) {
      if ((e as DOMException).name !== 'AbortError') this.app.message = { kind: 'error', text: `Save as… failed: ${(e as Error).message}` };
      return;
    }
    const done = await this.app.run(`Saving ${tab.name} as ${handle.name}`, async () => {
      await writeBlob(handle, (await engine().download(tab.id)).blob);
      return true;
    });
    if (done) this.app.message = { kind: 'info', text: `Saved as ${handle.name}; ${tab.name} is unchanged and its changes still wait here.` };
  }

  private async permitted(tab: ImageTab): Promise<boolean> {
    const h = tab.handle as (FileSystemFileHandle & { requestPermission?: (d: object) => Promise<PermissionState> }) | undefined;
    if (!h?.requestPermission) return true;
    const granted = (await h.requestPermission({ mode: 'readwrite' })) === 'granted';
    if (!granted) this.app.message = { kind: 'error', text: `Permission to write ${tab.name} was not granted: nothing was saved, the changes are still pending.`, code: 'READ_ONLY' };
    return granted;
  }

  private async reload(tab: ImageTab): Promise<void> {
    const fresh = await engine().summary(tab.id).catch(() => undefined);
    if (fresh) tab.summary = fresh;
  }
}
