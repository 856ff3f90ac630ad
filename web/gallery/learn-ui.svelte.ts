// Which learning dialog is open (the examples or the lessons): opened from the top bar and the
// start screen, drawn once by LearnActions.svelte.
export const learnUi = $state<{ dialog: 'gallery' | 'lessons' | null }>({ dialog: null });
