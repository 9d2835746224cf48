// A client that leaves in the middle of its request body, on the ambassador: logged as
// 499 ABORTED (as a client leaving while the upstream answers is), not as a 400
// REQUEST_BODY_INCOMPLETE "answered" to nobody; the service never sees the request.
import { connect } from 'node:net'
import { afterAll, beforeAll, expect, it } from 'vitest'
import type { ListenerServer } from '../../../src/proxy/inbound/listener.js'
import {
  type CapturedLog,
  defaultLimits,
  listenAmbassador,
  listenerConfig,
  type RecordingService,
  recordingService,
} from './harness.js'

let orders: RecordingService
let server: ListenerServer
let port: number
let log: CapturedLog

beforeAll(async () => {
  orders = recordingService('orders')
  const listener = listenerConfig({ limits: { ...defaultLimits, maxBodyBytes: 1_000_000 } })
  ;({ server, port, log } = await listenAmbassador([orders], { listener }))
})
afterAll(async () => {
  await server.close()
})

const accessLines = () => log.lines().filter((line) => line.msg === 'access')

it('logs a client that leaves mid-upload as 499 ABORTED under its service', async () => {
  const socket = connect(port, '127.0.0.1')
  socket.on('error', () => {})
  await new Promise((resolve) => socket.once('connect', resolve))
  socket.write(
    `PUT /orders/items HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n${'a'.repeat(1_000)}`,
  )
  // The head and the first bytes must be read before the client leaves.
  await new Promise((resolve) => setTimeout(resolve, 50))
  socket.destroy()
  for (let i = 0; i < 200 && accessLines().length === 0; i++) {
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
  expect(accessLines()).toMatchObject([
    { status: 499, error: 'ABORTED', method: 'PUT', path: '/orders/items', bytesIn: 1_000 },
  ])
  expect(log.text()).not.toContain('REQUEST_BODY_INCOMPLETE')
  expect(orders.forwarded).toHaveLength(0)
})
