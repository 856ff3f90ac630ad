// Vite build of the web app (index.html + web/ + worker/) into dist/web/. Unit tests have their
// own vitest.config.ts: no `test:` key here (docs/platform.md).
import { defineConfig } from 'vite';
import { svelte } from '@sveltejs/vite-plugin-svelte';
import { VitePWA } from 'vite-plugin-pwa';

export default defineConfig({
  // Relative base: the app works from any folder of a static host, and so does its service worker.
  base: './',
  plugins: [
    svelte(),
    VitePWA({
      strategies: 'generateSW',
      registerType: 'autoUpdate',
      // Registered from web/main.ts through virtual:pwa-register (an inline script would break the CSP).
      injectRegister: false,
      includeAssets: ['icon.svg', 'favicon.svg'],
      manifest: {
        name: 'qcowscope',
        short_name: 'qcowscope',
        description: 'See inside qcow2 disk images, check them and manage their snapshots — offline, nothing uploaded.',
        start_url: './',
        scope: './',
        display: 'standalone',
        background_color: '#0f1720',
        theme_color: '#0f1720',
        icons: [
          { src: 'icon-192.png', sizes: '192x192', type: 'image/png' },
          { src: 'icon-512.png', sizes: '512x512', type: 'image/png' },
          { src: 'icon-512.png', sizes: '512x512', type: 'image/png', purpose: 'maskable' },
          { src: 'icon.svg', sizes: 'any', type: 'image/svg+xml' },
        ],
      },
      workbox: {
        // The worker chunk and wasm-free engine are plain JS; webmanifest is added by the plugin.
        globPatterns: ['**/*.{js,css,html,svg,png,ico}'],
        navigateFallback: 'index.html',
        // The engine chunk can be large; precache it anyway so the app works offline.
        maximumFileSizeToCacheInBytes: 8 * 1024 * 1024,
        cleanupOutdatedCaches: true,
        // Take control of the open page at once, so it works offline from its first visit.
        clientsClaim: true,
        skipWaiting: true,
      },
    }),
  ],
  worker: { format: 'es' },
  build: {
    outDir: 'dist/web',
    emptyOutDir: true,
    target: 'es2022',
    sourcemap: true,
  },
  server: { strictPort: true },
  preview: { strictPort: true },
});
