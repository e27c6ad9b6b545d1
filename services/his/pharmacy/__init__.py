"""The pharmacy service: formulary, stock by lot, and dispensing against its copy of orders'
prescriptions."""
