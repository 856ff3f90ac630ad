// Svelte's settings for the Vite plugin and svelte-check: the defaults (Svelte 5 runes; <script
// lang="ts"> needs no preprocessor). The file exists so both find the same, stated configuration.
export default {};
