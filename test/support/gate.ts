/** A promise and the function that resolves it: for holding work at a point the test chooses. */
export interface Gate {
  readonly promise: Promise<void>
  open(): void
}

/** A closed {@link Gate}; `open()` lets whatever awaits `promise` go on. */
export function gate(): Gate {
  let open!: () => void
  const promise = new Promise<void>((resolve) => {
    open = resolve
  })
  return { promise, open }
}
