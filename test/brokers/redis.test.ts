import { afterAll } from 'vitest'
import { stopOwnBrokers } from '../support/brokers.js'
import { describeBrokerConformance } from './conformance.js'

// Only stops a server this file started itself (when no global setup provided one).
afterAll(stopOwnBrokers)

describeBrokerConformance({ name: 'redis', dedupe: false })
