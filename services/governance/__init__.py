"""Governance: the audit trail (who did what, when, to which objects) and forgetting a patient everywhere."""
