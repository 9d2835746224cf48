// A listening server reports a failed accept (EMFILE / ENFILE: out of file descriptors, as a
// connection flood can cause) as an 'error' event. Without a listener for it, Node throws it,
// which ends the proxy; the listener logs it (at most every 10 s) and keeps serving.
import { afterEach, describe, expect, it } from 'vitest'
import { createListenerServer, type ListenerServer } from '../../../src/proxy/inbound/listener.js'
import { ManualClock } from '../../../src/testing/manual-clock.js'
import { sendRaw } from '../support/raw-http.js'
import { contextWith, listenerConfig, registryOf } from './harness.js'

let server: ListenerServer | undefined
afterEach(async () => {
  await server?.close(0)
  server = undefined
})

const acceptError = (): Error =>
  Object.assign(new Error('accept EMFILE'), { code: 'EMFILE', errno: -24, syscall: 'accept' })

describe('listener accept errors', () => {
  it('are logged, at most every 10 s, and the listener keeps serving', async () => {
    const clock = new ManualClock(0)
    const { ctx, log } = contextWith(() => registryOf([]), { clock })
    server = createListenerServer(
      listenerConfig(),
      (_req, res) => {
        res.writeHead(204)
        res.end()
      },
      ctx,
    )
    const { port } = await server.listen()
    const failures = () => log.lines().filter((l) => l.msg === 'accepting a connection failed')
    server.server.emit('error', acceptError())
    server.server.emit('error', acceptError())
    expect(failures()).toHaveLength(1)
    expect(failures()[0]).toMatchObject({ code: 'EMFILE', level: 'error' })
    await clock.advance(10_000)
    server.server.emit('error', acceptError())
    expect(failures()).toHaveLength(2)
    expect(failures()[1]).toMatchObject({ code: 'EMFILE', suppressed: 1 })
    const res = await sendRaw(port, `GET / HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`)
    expect(res.status).toBe(204)
  })
})
