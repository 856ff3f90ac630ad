// The browser part of `npm run bench`: opening and mapping an image in Chromium (production
// build, from a File and from OPFS). Filled in once the web app exposes a way to do it.
export async function runBrowserBench() {
  return { skipped: 'not measured yet' };
}
