"""The end-to-end path a newcomer follows: token, create, read back."""

from __future__ import annotations

from typing import Any


def test_sales_manager_creates_and_reads_a_contact(caller: Any) -> None:
    manager = caller("sales_manager", team="east")
    created = manager.gql(
        'mutation { createContact(input: {lastName: "Doe", firstName: "Jane", '
        'email: "jane@example.com", nationalId: "AB-123"}) { id email nationalId } }')
    assert "errors" not in created, created
    contact_id = created["data"]["createContact"]["id"]
    read = manager.gql("query($id: ID!) { contact(id: $id) { lastName email nationalId } }",
                       {"id": contact_id})
    assert read["data"]["contact"] == {"lastName": "Doe", "email": "jane@example.com",
                                       "nationalId": "AB-123"}
