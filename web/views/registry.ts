// The views, in the order a reader explores an image: adding a view is one entry here (the rail,
// the URL (#/id), the main area and where damage notes go all read this list).
import type { Component } from 'svelte';
import type { DamageArea } from '../../worker/api.ts';
import type { ImageTab } from '../lib/app.svelte.ts';
import HeaderView from './HeaderView.svelte';
import SnapshotsView from './SnapshotsView.svelte';
import L1View from './L1View.svelte';
import RefcountView from './RefcountView.svelte';
import ClusterMapView from './ClusterMapView.svelte';
import TranslateView from './TranslateView.svelte';
import DiffView from './DiffView.svelte';
import HexView from './HexView.svelte';
import PlaygroundView from './PlaygroundView.svelte';
import JournalView from './JournalView.svelte';
import CrashStageView from './CrashStageView.svelte';
import CheckView from './CheckView.svelte';

export interface ViewEntry {
  id: string;
  title: string;
  component: Component<{ tab: ImageTab }>;
  /** It needs only the header and the raw bytes: it works whatever the damage. */
  withoutTables?: boolean;
  /** The structures it draws: an open error in one of them is shown above it. */
  draws?: readonly DamageArea[];
}

export const VIEWS = [
  { id: 'header', title: 'Header', component: HeaderView, withoutTables: true, draws: ['header'] },
  { id: 'snapshots', title: 'Snapshots', component: SnapshotsView, draws: ['snapshot-table'] },
  { id: 'l1', title: 'L1 table', component: L1View, draws: ['l1-table', 'l2-table'] },
  { id: 'refcounts', title: 'Refcount table', component: RefcountView, draws: ['refcount-table', 'refcount-block'] },
  { id: 'map', title: 'Cluster map', component: ClusterMapView, draws: ['bitmaps'] },
  { id: 'translate', title: 'Translation', component: TranslateView },
  { id: 'diff', title: 'Diff', component: DiffView },
  { id: 'hex', title: 'Hex', component: HexView, withoutTables: true },
  { id: 'playground', title: 'Playground', component: PlaygroundView },
  { id: 'journal', title: 'Journal', component: JournalView },
  { id: 'crash', title: 'Crash stage', component: CrashStageView },
  { id: 'check', title: 'Check', component: CheckView },
] as const satisfies readonly ViewEntry[];

export type ViewName = (typeof VIEWS)[number]['id'];

export function viewEntry(id: ViewName): ViewEntry {
  return VIEWS.find((v) => v.id === id)!;
}
