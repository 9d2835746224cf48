// The admin API warns when it listens beyond loopback. Loopback is judged by address, not by
// spelling: all of 127.0.0.0/8, ::1 in any of its forms, IPv4-mapped loopback and `localhost`
// in any case are loopback; the wildcards 0.0.0.0 and :: reach every interface and must warn.
import { describe, expect, it } from 'vitest'
import { isLoopbackHost } from '../../../src/proxy/admin/server.js'
import { captureLog } from '../runtime/helpers.js'
import { startTestAdmin } from './admin-support.js'

describe('isLoopbackHost', () => {
  it.each([
    ['127.0.0.1', true],
    ['127.0.0.2', true],
    ['127.255.255.254', true],
    ['::1', true],
    ['[::1]', true],
    ['0:0:0:0:0:0:0:1', true],
    ['0000:0000:0000:0000:0000:0000:0000:0001', true],
    ['::ffff:127.0.0.1', true],
    ['[::ffff:127.0.0.1]', true],
    ['::ffff:7f00:1', true],
    ['localhost', true],
    ['LOCALHOST', true],
    ['localhost.', true],
    ['0.0.0.0', false],
    ['::', false],
    ['[::]', false],
    ['10.0.0.1', false],
    ['128.0.0.1', false],
    ['::ffff:10.0.0.1', false],
    ['::2', false],
    ['127.example.com', false],
    ['127.0.0.1.nip.io', false],
    ['localhost.example.com', false],
    ['admin.internal', false],
    ['', false],
  ])('%s is loopback: %s', (host, loopback) => {
    expect(isLoopbackHost(host)).toBe(loopback)
  })
})

describe('admin API loopback warning', () => {
  it('is not logged for another 127/8 address', async () => {
    const log = captureLog()
    const admin = await startTestAdmin({ host: '127.0.0.2', log })
    try {
      expect(log.lines().filter((l) => String(l.msg).includes('beyond loopback'))).toEqual([])
    } finally {
      await admin.close()
    }
  })
})
