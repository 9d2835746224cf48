// A client that disconnects while sending its body: the node:http adapter reports it to
// onError as the client's disconnect (AbortedError, code ABORTED, as for a wait the client
// left), not as a bare Error without a code that reads like a failure of the server.
import { connect } from 'node:net'
import { afterEach, expect, it } from 'vitest'
import { AbortedError } from '../../src/core/errors.js'
import {
  createIdempotency,
  createMemoryIdempotencyStore,
  idempotentHandler,
} from '../../src/idempotency/index.js'
import { type Listening, listen } from './servers.js'

let listening: Listening | undefined

afterEach(async () => {
  await listening?.close()
  listening = undefined
})

it('reports a body cut off by the client as ABORTED, running nothing', async () => {
  const store = createMemoryIdempotencyStore()
  const idempotency = createIdempotency({ store })
  let report!: (error: unknown) => void
  const reported = new Promise<unknown>((resolve) => {
    report = resolve
  })
  let arrive!: () => void
  const arrived = new Promise<void>((resolve) => {
    arrive = resolve
  })
  let runs = 0
  const guarded = idempotentHandler({ idempotency, onError: report }, (_req, res) => {
    runs++
    res.end('ran')
  })
  listening = await listen((req, res) => {
    guarded(req, res)
    arrive()
  })
  const { port } = new URL(listening.url)
  const socket = connect(Number(port), '127.0.0.1')
  socket.on('error', () => {})
  await new Promise<void>((resolve) => socket.once('connect', () => resolve()))
  socket.write(
    'POST /charges HTTP/1.1\r\nHost: x\r\nIdempotency-Key: k1\r\nContent-Length: 100\r\n\r\n{"amount":',
  )
  // Once the server has the request (and is reading its body), the client goes away.
  await arrived
  socket.destroy()
  const error = await reported
  expect(error).toBeInstanceOf(AbortedError)
  expect((error as AbortedError).code).toBe('ABORTED')
  expect(runs).toBe(0)
  expect(store.size).toBe(0)
})
