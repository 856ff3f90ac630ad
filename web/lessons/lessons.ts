// The lessons: one short guided path per question a student asks about qcow2, each step an
// address in the live views (web/links/address.ts) — a view, a selection, an offset — plus a few
// words and, where the step needs the image changed or a job run, one button that does it the
// way the view itself would. Every lesson runs on a gallery image (core/gallery/recipes.ts), so a
// lesson's link shows everyone the same figures.
import type { AppState, ImageTab } from '../lib/app.svelte.ts';
import { VIEWS } from '../views/registry.ts';
import type { Address } from '../links/address.ts';

export interface StepContext {
  app: AppState;
  tab: ImageTab;
}

export interface LessonStep {
  /** What to look at, in plain words. */
  text: string;
  /** Where the step points in the live views. */
  at(ctx: StepContext): Address | Promise<Address>;
  /** A change or a job the step needs first (offered as a button). */
  action?: { label: string; run(ctx: StepContext): Promise<unknown> };
}

export interface Lesson {
  id: string;
  question: string;
  /** The image it runs on: gallery:<id>. */
  img: string;
  steps: LessonStep[];
}

/** The guest byte the first lesson follows: in the 256 KiB that were rewritten between the two snapshots. */
const BYTE = 0x48000;

/** Where a crash is best seen: the Crash stage when the registry has it (by its title or id), else the Journal. */
export function crashView(): string {
  const stage = VIEWS.find((v) => /^crash stage$/i.test(v.title) || /^crash/.test(v.id));
  return stage?.id ?? 'journal';
}

/** A snapshot name not yet used in the image (`base`, else `base-2`, …). */
function freshName(tab: ImageTab, base: string): string {
  const names = new Set(tab.summary.snapshots.map((s) => s.name));
  let name = base;
  for (let i = 2; names.has(name); i++) name = `${base}-${i}`;
  return name;
}

/** The newest snapshot (highest ID), for the steps after a create. */
function newest(tab: ImageTab): string | undefined {
  const s = [...tab.summary.snapshots].sort((a, b) => Number(b.id) - Number(a.id))[0];
  return s ? `snap:${s.id}` : undefined;
}

const createSnapshot = (base: string) => ({
  label: `Create snapshot “${base}”`,
  run: ({ app, tab }: StepContext) => app.createSnapshot(tab, freshName(tab, base)),
});

export const LESSONS: readonly Lesson[] = [
  {
    id: 'byte',
    question: `Where does guest byte 0x${BYTE.toString(16)} live?`,
    img: 'gallery:snapshots',
    steps: [
      {
        text: `Translation follows guest byte 0x${BYTE.toString(16)} (288 KiB into the disk) from the guest's view to the file: which L1 entry, which L2 entry, and where in the cluster. The answer is its host offset.`,
        at: () => ({ view: 'translate', offset: BYTE }),
      },
      {
        text: 'First level: L1 entry 0 covers the first 512 MiB of the disk. It points to one L2 table, opened below it.',
        at: () => ({ view: 'l1', sel: 'l1:0' }),
      },
      {
        text: 'Second level: L2 entry 4 maps guest 0x40000 to 0x4ffff to one host cluster. The inspector decodes its bits: COPIED is clear, because snapshot “second” shares this cluster.',
        at: () => ({ view: 'l1', sel: 'l2:0.4' }),
      },
      {
        text: 'The bytes themselves: the host cluster holds the guest data written before snapshot “second” (0x22 repeated). Guest byte 0x48000 is 0x8000 bytes into it.',
        at: async ({ app, tab }) => {
          const t = await app.translate(tab, BYTE);
          return { view: 'hex', sel: t.hostOffset !== undefined ? `cluster:0x${(t.hostOffset - (t.hostOffset % tab.summary.header.clusterSize)).toString(16)}` : undefined };
        },
      },
    ],
  },
  {
    id: 'alone',
    question: 'What does snapshot “first” hold alone?',
    img: 'gallery:snapshots',
    steps: [
      {
        text: 'Snapshot “first” is selected. In the inspector, under Space: the clusters only it references. Deleting it frees exactly those; the shared ones stay.',
        at: () => ({ view: 'snapshots', sel: 'snap:1' }),
      },
      {
        text: 'The same clusters outlined on the cluster map: the old copies of data the disk has rewritten since, the L2 table they sit in, and the snapshot’s own L1 table.',
        at: async ({ app, tab }) => {
          const sp = await app.snapshotSpace(tab, '1');
          app.outlineOnMap(tab, 'Held only by snapshot first', sp.exclusiveRanges);
          return { view: 'map' };
        },
      },
      {
        text: 'Snapshot “second” for comparison: the active disk still uses most of what it holds, so it holds less alone.',
        at: () => ({ view: 'snapshots', sel: 'snap:2' }),
      },
    ],
  },
  {
    id: 'create',
    question: 'What did a snapshot create change?',
    img: 'gallery:snapshots',
    steps: [
      {
        text: 'The image has two snapshots. Create a third with the button here (the Snapshots view’s own Create snapshot does the same).',
        at: () => ({ view: 'snapshots' }),
        action: createSnapshot('third'),
      },
      {
        text: 'The journal lists every write the create made, in order. “What changed” counts the clusters by owner before and after: one new snapshot L1 table, a new snapshot table; the data clusters only changed from “active only” to “shared”, nothing was copied.',
        at: () => ({ view: 'journal' }),
      },
      {
        text: 'The new snapshot’s entry in the table: its L1 table is a copy of the active one, pointing at the same L2 tables and data.',
        at: ({ tab }) => ({ view: 'snapshots', sel: newest(tab) }),
      },
    ],
  },
  {
    id: 'size',
    question: 'Why is the file larger than its data?',
    img: 'gallery:big-clusters',
    steps: [
      {
        text: 'This image has 2 MiB clusters. A file grows only in whole clusters, so even one written byte takes 2 MiB.',
        at: () => ({ view: 'header', sel: 'field:cluster_bits' }),
      },
      {
        text: 'Guest 32 MiB got a 4 KiB write, and a whole 2 MiB host cluster holds it.',
        at: () => ({ view: 'translate', offset: 32 * 1024 * 1024 }),
      },
      {
        text: 'The cluster map counts every cluster of the file by what holds it (the Space table below the map): two data clusters hold the 8 KiB written; the header, the refcount table, a refcount block, the L1 and an L2 table take one cluster each.',
        at: () => ({ view: 'map' }),
      },
    ],
  },
  {
    id: 'crash',
    question: 'Why is a crash at any moment safe?',
    img: 'gallery:snapshots',
    steps: [
      {
        text: 'Take an operation to watch: create a snapshot with the button here.',
        at: () => ({ view: 'snapshots' }),
        action: createSnapshot('crash-test'),
      },
      {
        text: 'Its writes in order. New tables go to free clusters first and are flushed; then one write, the commit point, switches the image over; old structures are freed only after. A crash before the commit point leaves the old image and some unused clusters (a leak); after it, the new image. Never a lost reference.',
        at: () => ({ view: crashView() }),
      },
      {
        text: 'Check the image now: run the check with the button here. No errors, no leaks.',
        at: () => ({ view: 'check' }),
        action: { label: 'Run check', run: ({ app, tab }) => app.runCheck(tab) },
      },
    ],
  },
];

export function lesson(id: string): Lesson | undefined {
  return LESSONS.find((l) => l.id === id);
}
