import { afterEach, describe, expect, it } from 'vitest'
import { MAX_DEADLINE_HEADER_MS } from '../../../src/policies/deadline.js'
import type { ForwardRequest } from '../../../src/proxy/contracts.js'
import type { ListenerServer } from '../../../src/proxy/inbound/listener.js'
import { ManualClock } from '../../../src/testing/manual-clock.js'
import { sendRaw } from '../support/raw-http.js'
import { listenAmbassador, type RecordingService, recordingService } from './harness.js'

// The inbound deadline header at its edges: values longer than 15 digits and repeated headers
// (which node:http, like the fast path, joins into one "a, b" value).

const started: ListenerServer[] = []
afterEach(async () => {
  await Promise.all(started.splice(0).map((server) => server.close()))
})

async function deadlineAtFor(headerLines: string): Promise<number | undefined> {
  const clock = new ManualClock(1_000)
  const orders: RecordingService = recordingService('orders')
  const { server, port } = await listenAmbassador([orders], { clock })
  started.push(server)
  const host = `127.0.0.1:${port}`
  const response = await sendRaw(
    port,
    `GET /orders/x HTTP/1.1\r\nHost: ${host}\r\n${headerLines}\r\n\r\n`,
  )
  expect(response.status).toBe(200)
  const forwarded: ForwardRequest | undefined = orders.forwarded.at(-1)
  if (forwarded === undefined) throw new Error('nothing forwarded')
  return forwarded.deadlineAt === undefined ? undefined : forwarded.deadlineAt - 1_000
}

describe('a long deadline header value', () => {
  it('is the largest budget (the service caps it at overallMs), not a missing one', async () => {
    expect(await deadlineAtFor('X-Breakwater-Deadline-Ms: 999999999999999')).toBe(
      999_999_999_999_999,
    )
    expect(await deadlineAtFor('X-Breakwater-Deadline-Ms: 9999999999999996')).toBe(
      MAX_DEADLINE_HEADER_MS,
    )
    expect(await deadlineAtFor(`X-Breakwater-Deadline-Ms: ${'9'.repeat(400)}`)).toBe(
      MAX_DEADLINE_HEADER_MS,
    )
    expect(await deadlineAtFor(`X-Breakwater-Deadline-Ms: -${'9'.repeat(30)}`)).toBe(
      -MAX_DEADLINE_HEADER_MS,
    )
    // The tighter of the two bounds still holds.
    expect(
      await deadlineAtFor(`X-Breakwater-Deadline-Ms: ${'9'.repeat(20)}\r\nGrpc-Timeout: 250m`),
    ).toBe(250)
  })
})

describe('a deadline header sent more than once', () => {
  it('gives the smallest valid value, skipping malformed ones', async () => {
    expect(
      await deadlineAtFor('X-Breakwater-Deadline-Ms: 100\r\nX-Breakwater-Deadline-Ms: 50'),
    ).toBe(50)
    expect(await deadlineAtFor('X-Breakwater-Deadline-Ms: soon, 70')).toBe(70)
    expect(await deadlineAtFor('X-Breakwater-Deadline-Ms: soon, later')).toBeUndefined()
    expect(await deadlineAtFor('Grpc-Timeout: 2S\r\nGrpc-Timeout: 300m')).toBe(300)
    expect(
      await deadlineAtFor(
        'X-Breakwater-Deadline-Ms: 900, 400\r\nGrpc-Timeout: 1S\r\nGrpc-Timeout: 500m',
      ),
    ).toBe(400)
  })
})
