// A native <dialog> shown modal for as long as its component lives (focus trap, Escape): call from
// an $effect, which runs the returned cleanup when the component goes. The button that opened it
// gets focus back if it is still on the page (the dialog is removed, so the browser cannot).
export function showModal(dialog: HTMLDialogElement): () => void {
  const opener = document.activeElement instanceof HTMLElement ? document.activeElement : null;
  dialog.showModal();
  return () => {
    dialog.close();
    if (opener?.isConnected) queueMicrotask(() => opener.focus());
  };
}
