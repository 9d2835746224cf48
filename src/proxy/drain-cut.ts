// Connections a listener's drain cut when its time was up. The listener marks each one before it
// destroys it; the forward that then sees its response close reads the mark, so that a request
// the proxy cut is told from one whose client went away (DRAIN_TIMEOUT, not ABORTED) in the
// access log and the metrics. A WeakSet: a mark goes with its connection.

const cut = new WeakSet<object>()

/** Marks `connection` (a socket) as cut by the drain timeout, before it is destroyed. */
export function markCutByDrain(connection: object): void {
  cut.add(connection)
}

/**
 * True when the connection of `res` (the request's socket, or the response's own for a fast-path
 * response) was cut by the drain timeout.
 */
export function cutByDrain(res: {
  readonly socket: object | null
  readonly req?: { readonly socket: object | null } | undefined
}): boolean {
  const socket = res.req?.socket ?? res.socket
  return socket !== null && cut.has(socket)
}
