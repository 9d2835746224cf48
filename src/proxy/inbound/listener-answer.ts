// Connections the listener answered itself when node:http raised an error for them
// ('clientError' in listener.ts: node's request timer, 408 TIMEOUT, or its parser failing in
// the middle of a body, 400 REQUEST_INVALID) before it destroyed them. A request whose body was
// being read on such a connection sees its stream aborted just as when its client goes away;
// the mark tells the two apart, so that its access log line and metrics carry the answer the
// client was sent rather than 499 ABORTED. A WeakMap: a mark goes with its connection.

import type { ForwardOutcome } from '../contracts.js'

const answered = new WeakMap<object, ForwardOutcome>()

/**
 * Marks `connection` (a socket) as answered by the listener with `status` and the problem
 * `code`, when that answer was written and before the connection is destroyed.
 */
export function markAnsweredByListener(connection: object, status: number, code: string): void {
  answered.set(connection, {
    status,
    attempts: 0,
    written: false,
    endpoint: undefined,
    error: code,
    captured: undefined,
  })
}

/**
 * The outcome of the answer the listener wrote on `connection` before it destroyed it (see
 * {@link markAnsweredByListener}), or undefined when it wrote none.
 */
export function listenerAnswer(connection: object | null): ForwardOutcome | undefined {
  return connection === null ? undefined : answered.get(connection)
}
