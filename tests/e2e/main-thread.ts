// The page's own main-thread work, task by task, from a Chromium trace (CDP tracing through
// Playwright): every RunTask of the page's renderer main thread with its wall time (`dur`, what
// the Long Tasks API reports) and its thread CPU time (`tdur`, the time the thread actually ran).
//
// Why CPU time is what the e2e tests assert on: the machine that runs them has two cores shared by
// many processes, and a main-thread task's wall time there is 3-10 times its CPU time (measured on
// the fuzz corpus: tasks of 40-60 ms CPU took 150-420 ms wall at load average 5-20), because the
// renderer waits for a core in the middle of a task. That waiting is not the page's doing and
// changes from run to run; the CPU time of a task is the work the page put into one turn of its
// event loop, and it does not grow with other processes' load. A hostile image that makes the
// page build a 4 Mi-element array, draw 20,000 findings or 65,535 <option>s at once shows up there
// as seconds (it did: 2.9 s, 4.2 s), far above the 100 ms line, on any machine.
import type { Browser, Page } from '@playwright/test';

export interface MainThreadTask {
  /** Wall time (ms), as the Long Tasks API measures it. */
  wallMs: number;
  /** CPU time of the renderer main thread during the task (ms). */
  cpuMs: number;
  /** The trace events under the task with the most CPU time (for the failure message). */
  top: string;
}

export interface MainThreadWork {
  tasks: MainThreadTask[];
  longestCpu: MainThreadTask;
  longestWallMs: number;
  totalCpuMs: number;
}

interface ProfileNode { id: number; parent?: number; callFrame: { functionName?: string; url?: string; lineNumber?: number; columnNumber?: number } }

interface TraceEvent {
  name: string;
  ph: string;
  pid: number;
  tid: number;
  ts: number;
  dur?: number;
  tdur?: number;
  id?: string;
  args?: { name?: string; data?: { startTime?: number; cpuProfile?: { nodes?: ProfileNode[]; samples?: number[] }; timeDeltas?: number[]; frames?: Array<{ processId: number; url: string }>; functionName?: string; url?: string } };
}

/** Diagnosis aids, off in the tests: MAIN_THREAD_REPORT=N prints the N longest tasks (CPU) with
 * the trace events under them; MAIN_THREAD_PROFILE=1 also samples the JS stacks and prints each
 * one's heaviest functions (the sampling adds its own cost: measure without it). */
const REPORT = Number(process.env.MAIN_THREAD_REPORT ?? 0);
const PROFILE = REPORT > 0 && process.env.MAIN_THREAD_PROFILE === '1';

/** Start recording the page's main-thread tasks (one recording per browser at a time). */
export async function startMainThreadTrace(browser: Browser, page: Page): Promise<void> {
  const categories = ['devtools.timeline', 'disabled-by-default-devtools.timeline'];
  if (PROFILE) categories.push('disabled-by-default-v8.cpu_profiler');
  await browser.startTracing(page, { categories });
}

/** Stop recording and summarise the page's main-thread tasks since startMainThreadTrace. */
export async function stopMainThreadTrace(browser: Browser): Promise<MainThreadWork> {
  const raw = JSON.parse((await browser.stopTracing()).toString('utf8')) as { traceEvents: TraceEvent[] } | TraceEvent[];
  const events = Array.isArray(raw) ? raw : raw.traceEvents;
  // The page's renderer: the process of its main frame (other renderers, e.g. Chromium's own UI,
  // are not the page's work).
  const started = events.find((e) => e.name === 'TracingStartedInBrowser');
  const pid = started?.args?.data?.frames?.find((f) => /^https?:/.test(f.url))?.processId;
  if (pid === undefined) throw new Error('trace: no page renderer found');
  const main = events.find((e) => e.ph === 'M' && e.name === 'thread_name' && e.pid === pid && e.args?.name === 'CrRendererMain');
  if (!main) throw new Error('trace: no renderer main thread found');
  const onMain = events.filter((e) => e.pid === pid && e.tid === main.tid && e.ph === 'X');
  const runs = onMain.filter((e) => e.name === 'RunTask');
  if (runs.some((e) => e.tdur === undefined)) throw new Error('trace: tasks without thread time (tdur)');
  const tasks = runs.map((t): MainThreadTask => ({ wallMs: (t.dur ?? 0) / 1000, cpuMs: t.tdur! / 1000, top: '' }));
  let longest = 0;
  tasks.forEach((t, i) => {
    if (t.cpuMs > tasks[longest]!.cpuMs) longest = i;
  });
  const lt = runs[longest];
  if (lt) {
    const end = lt.ts + (lt.dur ?? 0);
    const inside = onMain.filter((e) => e !== lt && e.name !== 'RunTask' && e.ts >= lt.ts && e.ts < end);
    inside.sort((a, b) => (b.tdur ?? 0) - (a.tdur ?? 0));
    tasks[longest]!.top = inside.slice(0, 5).map((e) => {
      const d = e.args?.data;
      const where = d?.url ? ` ${d.functionName ?? ''}@${d.url.split('/').pop()}` : '';
      return `${e.name}${where} ${((e.tdur ?? 0) / 1000).toFixed(0)} ms`;
    }).join(', ');
  }
  if (REPORT) printReport(events, pid, main.tid, runs);
  return {
    tasks,
    longestCpu: tasks[longest] ?? { wallMs: 0, cpuMs: 0, top: '' },
    longestWallMs: Math.max(0, ...tasks.map((t) => t.wallMs)),
    totalCpuMs: tasks.reduce((n, t) => n + t.cpuMs, 0),
  };
}

/** Print the REPORT longest tasks (CPU), with the functions their samples fell in (self and total). */
function printReport(events: TraceEvent[], pid: number, tid: number, runs: TraceEvent[]): void {
  const nodes = new Map<number, ProfileNode>();
  const samples: Array<{ ts: number; node: number }> = [];
  const profiles = events.filter((e) => e.pid === pid && e.tid === tid && e.name === 'Profile');
  for (const p of profiles) {
    let ts = p.args?.data?.startTime ?? 0;
    for (const c of events.filter((e) => e.name === 'ProfileChunk' && e.id === p.id)) {
      for (const n of c.args?.data?.cpuProfile?.nodes ?? []) nodes.set(n.id, n);
      const ss = c.args?.data?.cpuProfile?.samples ?? [];
      const ds = c.args?.data?.timeDeltas ?? [];
      ss.forEach((node, i) => {
        ts += ds[i] ?? 0;
        samples.push({ ts, node });
      });
    }
  }
  const name = (n: ProfileNode) => `${n.callFrame.functionName || '(anon)'}@${(n.callFrame.url ?? '').split('/').pop()}:${(n.callFrame.lineNumber ?? 0) + 1}:${(n.callFrame.columnNumber ?? 0) + 1}`;
  const sorted = [...runs].sort((a, b) => (b.tdur ?? 0) - (a.tdur ?? 0)).slice(0, REPORT);
  for (const t of sorted) {
    const end = t.ts + (t.dur ?? 0);
    const self = new Map<string, number>();
    const total = new Map<string, number>();
    let count = 0;
    for (const s of samples) {
      if (s.ts < t.ts || s.ts >= end) continue;
      count++;
      let n = nodes.get(s.node);
      if (n) self.set(name(n), (self.get(name(n)) ?? 0) + 1);
      const seen = new Set<string>();
      while (n) {
        const k = name(n);
        if (!seen.has(k)) total.set(k, (total.get(k) ?? 0) + 1);
        seen.add(k);
        n = n.parent === undefined ? undefined : nodes.get(n.parent);
      }
    }
    const top = (m: Map<string, number>) => [...m].sort((a, b) => b[1] - a[1]).slice(0, Number(process.env.MAIN_THREAD_PROFILE_LINES ?? 12)).map(([k, v]) => `    ${v}\t${k}`).join('\n');
    const inside = events.filter((e) => e.pid === pid && e.tid === tid && e.ph === 'X' && e !== t && e.ts >= t.ts && e.ts < end)
      .filter((e) => !e.name.startsWith('V8.GC_')).sort((a, b) => (b.tdur ?? 0) - (a.tdur ?? 0)).slice(0, 10)
      .map((e) => `${e.name}${e.args?.data?.url ? ' ' + (e.args.data.functionName ?? '') + '@' + e.args.data.url.split('/').pop() : ''} ${((e.tdur ?? 0) / 1000).toFixed(0)}`).join(', ');
    console.log(`task ${((t.tdur ?? 0) / 1000).toFixed(0)} ms CPU, ${((t.dur ?? 0) / 1000).toFixed(0)} ms wall: ${inside}`);
    if (PROFILE) console.log(`  ${count} samples, self:\n${top(self)}\n  total:\n${top(total)}`);
  }
}
