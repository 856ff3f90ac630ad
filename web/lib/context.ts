// One typed context for the app state: App.svelte sets it, every component gets it.
import { getContext, setContext } from 'svelte';
import type { AppState } from './app.svelte.ts';

const KEY = Symbol('qcowscope-app');

export function setApp(app: AppState): AppState {
  return setContext(KEY, app);
}

export function getApp(): AppState {
  const app = getContext<AppState | undefined>(KEY);
  if (!app) throw new Error('getApp() outside <App>');
  return app;
}
