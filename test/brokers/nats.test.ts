import { describeBrokerConformance } from './conformance.js'

describeBrokerConformance({ name: 'nats', dedupe: true })
