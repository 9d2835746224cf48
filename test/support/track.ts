// A promise's outcome as plain fields, for tests that move a ManualClock and check, between
// steps, whether a call has settled yet without awaiting it.

/** A promise's outcome so far: `settled` once it has, `error` if it rejected. */
export interface Tracked {
  readonly settled: boolean
  readonly error: unknown
}

/** Tracks `call`: the returned fields are updated when it settles. */
export function track(call: Promise<unknown>): Tracked {
  const state = { settled: false, error: undefined as unknown }
  call.then(
    () => {
      state.settled = true
    },
    (error: unknown) => {
      state.settled = true
      state.error = error
    },
  )
  return state
}
