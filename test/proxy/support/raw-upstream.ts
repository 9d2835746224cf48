// A raw TCP upstream that answers every request with the same bytes, exactly as given: the
// malformed or unusual responses (obs-fold, conflicting framing, a 204 with Content-Length)
// that node:http would refuse to write.

import { createServer, type Socket } from 'node:net'
import { listenOnLoopback } from '../../support/loopback.js'

/** A running {@link startScriptedUpstream}. */
export interface ScriptedUpstream {
  /** `http://127.0.0.1:<port>`. */
  readonly url: string
  /** Whole requests received so far. */
  requests(): number
  /** Destroys the connections and stops listening. */
  close(): Promise<void>
}

/**
 * Starts the upstream on a free loopback port. Each whole request (its head and a
 * Content-Length body) gets `answer`; the connection stays open unless the client closes it.
 */
export async function startScriptedUpstream(answer: string): Promise<ScriptedUpstream> {
  let requests = 0
  const sockets: Socket[] = []
  const server = createServer((socket) => {
    sockets.push(socket)
    socket.on('error', () => {})
    let pending = Buffer.alloc(0)
    socket.on('data', (data: Buffer) => {
      pending = Buffer.concat([pending, data])
      let headEnd = pending.indexOf('\r\n\r\n')
      while (headEnd >= 0) {
        const length = /content-length:\s*(\d+)/i.exec(pending.toString('latin1', 0, headEnd))
        const whole = headEnd + 4 + Number(length?.[1] ?? 0)
        if (pending.length < whole) return
        pending = pending.subarray(whole)
        requests++
        socket.write(answer, 'latin1')
        headEnd = pending.indexOf('\r\n\r\n')
      }
    })
  })
  const port = await listenOnLoopback(server)
  return {
    url: `http://127.0.0.1:${port}`,
    requests: () => requests,
    close: async () => {
      for (const socket of sockets) socket.destroy()
      await new Promise((resolve) => server.close(resolve))
    },
  }
}
